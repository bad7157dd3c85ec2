//! The meeting end to end: several real WebSocket clients speaking the room protocol to a real
//! server. Every step waits on a condition with a deadline, then checks that every client sees
//! the same room state.

use balint_e2e::handshake_status;
use balint_e2e::{TestServer, YClient};
use balint_proto::close;
use balint_proto::room::{ErrorCode, Phase, Released, Role, RoomState, ServerMessage, Status};
use serde_json::json;

/// Index of each client in a session's `Vec<YClient>`.
const LEA: usize = 0;
const ANN: usize = 1;
const BEN: usize = 2;
const CEM: usize = 3;

/// The state without the fields only leaders get, so leader and member views compare.
fn shared_view(state: &RoomState) -> RoomState {
    RoomState { waiting: None, participation: None, ..state.clone() }
}

/// Waits until every client sees a state that satisfies `condition`, then checks that they all
/// hold the same version and the same state (leader-only fields aside), and returns it.
async fn settle(clients: &mut [YClient], condition: impl Fn(&RoomState) -> bool) -> RoomState {
    for client in clients.iter_mut() {
        client.wait_state(&condition).await.unwrap();
    }
    let version = clients.iter().map(|c| c.latest_state().unwrap().version).max().unwrap();
    for client in clients.iter_mut() {
        client.wait_version(version).await.unwrap();
    }
    let first = shared_view(clients[0].latest_state().unwrap());
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(shared_view(client.latest_state().unwrap()), first, "client {i} sees the same state");
    }
    first
}

fn queue(state: &RoomState) -> Vec<&str> {
    state.queue.iter().map(|h| h.member.as_str()).collect()
}

fn floor(state: &RoomState) -> Option<&str> {
    state.floor.as_ref().map(|f| f.member.as_str())
}

fn status(state: &RoomState, member: &str) -> Option<Status> {
    state.members.iter().find(|m| m.id == member).map(|m| m.status)
}

fn turns(state: &RoomState, member: &str) -> u32 {
    let participation = state.participation.as_ref().expect("a leader's view carries participation");
    participation.iter().find(|p| p.member == member).map_or(0, |p| p.turns)
}

/// Types `text` on a client that may not write and returns the refusal's code.
async fn refused_edit(client: &mut YClient, text: &str) -> ErrorCode {
    let before = client.errors().len();
    client.type_text(text).await.unwrap();
    client.wait_until(|c| c.errors().len() > before).await.unwrap();
    client.errors()[before]
}

/// A leader ("Lea") and members joined through the room protocol, in that order.
async fn session(server: &TestServer, room: &balint_e2e::Room, members: &[&str]) -> (Vec<YClient>, Vec<String>) {
    let mut clients = vec![YClient::join(&server.ws_url(&room.id, &room.leader_token, "Lea")).await.unwrap()];
    for name in members {
        clients.push(YClient::join(&server.ws_url(&room.id, &room.invite_token, name)).await.unwrap());
    }
    let ids: Vec<String> = clients.iter().map(|c| c.member_id().unwrap().to_owned()).collect();
    let everyone = clients.len();
    settle(&mut clients, |s| s.members.len() == everyone).await;
    (clients, ids)
}

#[tokio::test]
async fn a_full_balint_session() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({"title": "Tuesday group"})).await;
    let (mut all, ids) = session(&server, &room, &["Ann", "Ben", "Cem"]).await;
    let (lea, ann, ben, cem) = (ids[LEA].as_str(), ids[ANN].as_str(), ids[BEN].as_str(), ids[CEM].as_str());

    // Gathering: four members in order of arrival; leader-only fields for the leader only.
    assert_eq!(all[LEA].role(), Some(Role::Leader));
    assert_eq!(all[ANN].role(), Some(Role::Member));
    let state = all[LEA].latest_state().unwrap().clone();
    assert_eq!(state.phase.name, Phase::Gathering);
    assert_eq!(state.title.as_deref(), Some("Tuesday group"));
    assert!(state.ephemeral);
    let names: Vec<&str> = state.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["Lea", "Ann", "Ben", "Cem"]);
    let member_ids: Vec<&str> = state.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(member_ids, [lea, ann, ben, cem]);
    assert!(state.members.iter().all(|m| m.status == Status::Here));
    assert_eq!(state.waiting, Some(vec![]));
    assert_eq!(state.participation.as_ref().map(Vec::len), Some(4));
    for member in &all[ANN..] {
        let view = member.latest_state().unwrap();
        assert!(view.waiting.is_none() && view.participation.is_none(), "leader-only fields stay with leaders");
    }

    all[LEA].command(json!({"type": "pick_presenter", "member": ann})).await.unwrap();
    settle(&mut all, |s| s.presenter.as_deref() == Some(ann)).await;

    // Presentation: the presenter holds the floor, and only the presenter can.
    all[LEA].command(json!({"type": "set_phase", "phase": "presentation"})).await.unwrap();
    let state = settle(&mut all, |s| s.phase.name == Phase::Presentation).await;
    assert_eq!(floor(&state), Some(ann));
    assert_eq!(state.phase.duration_secs, Phase::Presentation.suggested_secs());
    assert_eq!(all[LEA].refused(json!({"type": "grant_floor", "member": ben})).await.unwrap(), ErrorCode::NotEligible);
    all[ANN].command(json!({"type": "yield_floor"})).await.unwrap();
    settle(&mut all, |s| s.floor.is_none()).await;

    // Questions: three hands, one queue, identical everywhere, in the order raised.
    all[LEA].command(json!({"type": "set_phase", "phase": "questions", "duration_secs": 600})).await.unwrap();
    settle(&mut all, |s| s.phase.name == Phase::Questions).await;
    let mut expected: Vec<&str> = Vec::new();
    for (who, id) in [(CEM, cem), (BEN, ben), (ANN, ann)] {
        all[who].command(json!({"type": "raise_hand"})).await.unwrap();
        expected.push(id);
        let state = settle(&mut all, |s| s.queue.len() == expected.len()).await;
        assert_eq!(queue(&state), expected);
    }
    // A second raise changes nothing: the conflict that follows on the same connection proves
    // the server handled it, and no new state came.
    let version = all[CEM].latest_state().unwrap().version;
    all[CEM].command(json!({"type": "raise_hand"})).await.unwrap();
    assert_eq!(all[CEM].refused(json!({"type": "yield_floor"})).await.unwrap(), ErrorCode::Conflict);
    assert_eq!(all[CEM].latest_state().unwrap().version, version);

    // The leader calls the head of the queue; that hand goes down.
    all[LEA].command(json!({"type": "next_speaker"})).await.unwrap();
    let state = settle(&mut all, |s| s.floor.is_some()).await;
    assert_eq!(floor(&state), Some(cem));
    assert_eq!(queue(&state), [ben, ann]);
    assert_eq!(turns(all[LEA].latest_state().unwrap(), cem), 1);
    all[CEM].command(json!({"type": "yield_floor"})).await.unwrap();
    settle(&mut all, |s| s.floor.is_none()).await;

    all[LEA].command(json!({"type": "next_speaker"})).await.unwrap();
    let state = settle(&mut all, |s| s.floor.is_some()).await;
    assert_eq!(floor(&state), Some(ben));
    assert_eq!(queue(&state), [ann]);
    all[LEA].command(json!({"type": "revoke_floor"})).await.unwrap();
    settle(&mut all, |s| s.floor.is_none()).await;

    all[LEA].command(json!({"type": "next_speaker"})).await.unwrap();
    let state = settle(&mut all, |s| s.floor.is_some()).await;
    assert_eq!(floor(&state), Some(ann));
    assert!(state.queue.is_empty());
    assert_eq!(all[LEA].refused(json!({"type": "next_speaker"})).await.unwrap(), ErrorCode::QueueEmpty);
    let leader_view = all[LEA].latest_state().unwrap();
    assert_eq!((turns(leader_view, ann), turns(leader_view, ben), turns(leader_view, cem)), (2, 1, 1));

    // Reflection: the presenter is pushed back, off the floor, and cannot raise a hand or write.
    all[LEA].command(json!({"type": "set_phase", "phase": "reflection"})).await.unwrap();
    let state = settle(&mut all, |s| s.phase.name == Phase::Reflection).await;
    assert_eq!(status(&state, ann), Some(Status::OutsideCircle));
    assert_eq!(status(&state, ben), Some(Status::Here));
    assert_eq!(floor(&state), None);
    let version = state.version;
    assert_eq!(all[ANN].refused(json!({"type": "raise_hand"})).await.unwrap(), ErrorCode::NotEligible);
    assert_eq!(all[LEA].refused(json!({"type": "grant_floor", "member": ann})).await.unwrap(), ErrorCode::NotEligible);
    assert_eq!(refused_edit(&mut all[ANN], "PRESENTER-EDIT").await, ErrorCode::ReadOnly);
    // The group writes on; the presenter's edit reaches nobody.
    all[BEN].type_text("What did the patient want from her?").await.unwrap();
    for who in [LEA, CEM] {
        all[who].wait_until(|c| c.notes() == "What did the patient want from her?").await.unwrap();
    }
    all[ANN].wait_until(|c| c.notes().contains("What did the patient want")).await.unwrap();
    assert_eq!(all[BEN].notes(), "What did the patient want from her?");
    // Nor did any refusal change the state.
    for client in &all {
        assert_eq!(client.latest_state().unwrap().version, version);
    }
    all[BEN].command(json!({"type": "raise_hand"})).await.unwrap();
    settle(&mut all, |s| !s.queue.is_empty()).await;
    all[LEA].command(json!({"type": "next_speaker"})).await.unwrap();
    let state = settle(&mut all, |s| s.floor.is_some()).await;
    assert_eq!(floor(&state), Some(ben));

    // Response: the presenter comes back and gets the floor first.
    all[LEA].command(json!({"type": "set_phase", "phase": "response"})).await.unwrap();
    let state = settle(&mut all, |s| s.phase.name == Phase::Response).await;
    assert_eq!(floor(&state), Some(ann));
    assert_eq!(status(&state, ann), Some(Status::Here));

    // Closing. A late joiner gets the board as the server holds it: without the refused edit.
    all[LEA].command(json!({"type": "set_phase", "phase": "closing"})).await.unwrap();
    settle(&mut all, |s| s.phase.name == Phase::Closing).await;
    let mut late = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "Late")).await.unwrap();
    assert_eq!(late.notes(), "What did the patient want from her?");

    // End for all: `ended`, then 4410, for every client; the room answers 410 from then on.
    all[LEA].command(json!({"type": "end_meeting"})).await.unwrap();
    for (i, client) in all.iter_mut().enumerate() {
        let closed = client.wait_closed().await.unwrap();
        assert_eq!(closed.code, close::MEETING_ENDED, "client {i}");
        match client.texts.last() {
            Some(ServerMessage::Ended { reason }) => assert_eq!(reason, "ended_by_leader"),
            other => panic!("client {i}: expected `ended` before the close, got {other:?}"),
        }
    }
    assert_eq!(late.wait_closed().await.unwrap().code, close::MEETING_ENDED);
    assert!(late.texts.is_empty(), "a stock client never gets a text frame");
    assert_eq!(handshake_status(&server.ws_url(&room.id, &room.invite_token, "Again")).await, 410);
    assert_eq!(handshake_status(&server.ws_url(&room.id, &room.leader_token, "Lea")).await, 410);
}

#[tokio::test]
async fn leader_commands_from_a_member_are_forbidden_and_change_nothing() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let (mut all, ids) = session(&server, &room, &["Ann", "Ben"]).await;
    let (ann, ben) = (ids[ANN].as_str(), ids[BEN].as_str());
    all[ANN].command(json!({"type": "raise_hand"})).await.unwrap();
    let before = settle(&mut all, |s| !s.queue.is_empty()).await;
    let seen: Vec<usize> = all.iter().map(|c| c.states().count()).collect();

    for command in [
        json!({"type": "grant_floor", "member": ann}),
        json!({"type": "grant_floor", "member": ben}),
        json!({"type": "next_speaker"}),
        json!({"type": "lower_hand", "member": ann}),
        json!({"type": "lower_all_hands"}),
        json!({"type": "set_phase", "phase": "questions"}),
        json!({"type": "pick_presenter", "member": ben}),
        json!({"type": "lock_board", "locked": true}),
        json!({"type": "set_role", "member": ben, "role": "leader"}),
        json!({"type": "kick", "member": ann}),
        json!({"type": "end_meeting"}),
    ] {
        assert_eq!(all[BEN].refused(command.clone()).await.unwrap(), ErrorCode::Forbidden, "{command}");
    }

    // The next change is the leader's, one version on: nothing came in between.
    all[LEA].command(json!({"type": "set_fair_order", "enabled": true})).await.unwrap();
    let after = settle(&mut all, |s| s.fair_order).await;
    assert_eq!(after.version, before.version + 1);
    assert_eq!(RoomState { version: before.version, fair_order: false, ..after.clone() }, before);
    for (i, client) in all.iter().enumerate() {
        assert_eq!(client.states().count(), seen[i] + 1, "client {i} got exactly one new state");
    }
    assert!(all[LEA].errors().is_empty() && all[ANN].errors().is_empty());
}

#[tokio::test]
async fn an_observer_edit_is_refused_and_not_relayed() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut leader = YClient::join(&server.ws_url(&room.id, &room.leader_token, "Lea")).await.unwrap();
    let mut observer = YClient::join(&server.ws_url(&room.id, &room.observer_token, "Olga")).await.unwrap();
    assert_eq!(observer.role(), Some(Role::Observer));
    // A stock Yjs client (no hello) joins as a member named from the query string.
    let mut stock = YClient::connect(&server.ws_url(&room.id, &room.observer_token, "Stock%20Sam")).await.unwrap();
    let mut member = YClient::join(&server.ws_url(&room.id, &room.invite_token, "Ann")).await.unwrap();
    let state = leader.wait_state(|s| s.members.len() == 4).await.unwrap();
    let roles: Vec<(&str, Role)> = state.members.iter().map(|m| (m.name.as_str(), m.role)).collect();
    assert_eq!(
        roles,
        [("Lea", Role::Leader), ("Olga", Role::Observer), ("Stock Sam", Role::Observer), ("Ann", Role::Member)]
    );

    // Observers read the board.
    leader.type_text("Leader: ").await.unwrap();
    for client in [&mut observer, &mut stock, &mut member] {
        client.wait_until(|c| c.notes() == "Leader: ").await.unwrap();
    }

    // They may not write: refused, with `read_only` for the one that said hello.
    assert_eq!(refused_edit(&mut observer, "OBSERVER-EDIT").await, ErrorCode::ReadOnly);
    stock.type_text("STOCK-EDIT").await.unwrap();
    assert_eq!(observer.refused(json!({"type": "raise_hand"})).await.unwrap(), ErrorCode::Forbidden);

    // The member writes on; the observers' edits reach nobody.
    member.type_text("member thoughts").await.unwrap();
    leader.wait_until(|c| c.notes() == "Leader: member thoughts").await.unwrap();
    stock.wait_until(|c| c.notes().contains("member thoughts")).await.unwrap();
    assert!(!stock.notes().contains("OBSERVER-EDIT"));
    observer.wait_until(|c| c.notes().contains("member thoughts")).await.unwrap();
    assert!(!observer.notes().contains("STOCK-EDIT"));
    assert_eq!(member.notes(), "Leader: member thoughts");
    // And the server never applied them: a late joiner gets the board without them.
    let late = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "Late")).await.unwrap();
    assert_eq!(late.notes(), "Leader: member thoughts");
    assert!(stock.texts.is_empty(), "a stock client never gets a text frame");
}

#[tokio::test]
async fn a_locked_board_is_read_only_for_everyone_but_leaders() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let (mut all, _ids) = session(&server, &room, &["Ann"]).await;
    all[LEA].command(json!({"type": "lock_board", "locked": true})).await.unwrap();
    settle(&mut all, |s| s.board_locked).await;
    assert_eq!(refused_edit(&mut all[ANN], "LOCKED-EDIT").await, ErrorCode::ReadOnly);
    all[LEA].type_text("leader only").await.unwrap();
    all[ANN].wait_until(|c| c.notes().contains("leader only")).await.unwrap();

    all[LEA].command(json!({"type": "lock_board", "locked": false})).await.unwrap();
    settle(&mut all, |s| !s.board_locked).await;
    assert_eq!(all[LEA].notes(), "leader only", "the locked edit was not relayed");
    let late = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "Late")).await.unwrap();
    assert_eq!(late.notes(), "leader only", "the locked edit was not applied");
}

#[tokio::test]
async fn a_member_who_reconnects_within_the_grace_period_keeps_their_place() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let (mut all, ids) = session(&server, &room, &["Ann", "Ben", "Cem"]).await;
    let (ann, ben, cem) = (ids[ANN].as_str(), ids[BEN].as_str(), ids[CEM].as_str());
    for (i, who) in [ANN, BEN, CEM].into_iter().enumerate() {
        all[who].command(json!({"type": "raise_hand"})).await.unwrap();
        settle(&mut all, |s| s.queue.len() == i + 1).await;
    }

    // Ben's network drops: he shows as reconnecting and keeps his place.
    let token = all[BEN].resume_token().unwrap().to_owned();
    all.remove(BEN).drop_connection();
    let state = settle(&mut all, |s| s.members.iter().any(|m| m.status == Status::Reconnecting)).await;
    assert_eq!(status(&state, ben), Some(Status::Reconnecting));
    assert_eq!(queue(&state), [ann, ben, cem]);
    let refusal = all[0].refused(json!({"type": "grant_floor", "member": ben})).await.unwrap();
    assert_eq!(refusal, ErrorCode::NotEligible, "the floor waits for a reconnecting member");

    // He comes back with his resume token: the same member, the same place.
    let url = server.ws_url(&room.id, &room.invite_token, "Ben");
    let back = YClient::join_resuming(&url, Some(&token)).await.unwrap();
    assert_eq!(back.member_id(), Some(ben));
    assert_eq!(back.role(), Some(Role::Member));
    all.insert(BEN, back);
    let state = settle(&mut all, |s| s.members.iter().all(|m| m.status == Status::Here)).await;
    assert_eq!(state.members.len(), 4);
    assert_eq!(queue(&state), [ann, ben, cem]);

    all[LEA].command(json!({"type": "next_speaker"})).await.unwrap();
    assert_eq!(floor(&settle(&mut all, |s| s.floor.is_some()).await), Some(ann));
    all[LEA].command(json!({"type": "next_speaker"})).await.unwrap();
    let state = settle(&mut all, |s| floor(s) != Some(ann)).await;
    assert_eq!(floor(&state), Some(ben));
    assert_eq!(queue(&state), [cem]);
}

#[tokio::test]
async fn a_member_away_past_the_grace_period_loses_their_place() {
    let server = TestServer::start_with(|c| c.reconnect_grace_secs = 1).await;
    let room = server.create_room(json!({})).await;
    let (mut all, ids) = session(&server, &room, &["Ann", "Ben"]).await;
    let (ann, ben) = (ids[ANN].as_str(), ids[BEN].as_str());
    all[BEN].command(json!({"type": "raise_hand"})).await.unwrap();
    settle(&mut all, |s| s.queue.len() == 1).await;
    all[ANN].command(json!({"type": "raise_hand"})).await.unwrap();
    settle(&mut all, |s| s.queue.len() == 2).await;

    let token = all[BEN].resume_token().unwrap().to_owned();
    all.remove(BEN).drop_connection();
    let state = settle(&mut all, |s| s.members.len() == 2).await;
    assert_eq!(queue(&state), [ann]);

    // The old token no longer resumes anything: a newcomer with a new id...
    let url = server.ws_url(&room.id, &room.invite_token, "Ben");
    let back = YClient::join_resuming(&url, Some(&token)).await.unwrap();
    assert_ne!(back.member_id(), Some(ben));
    // And the welcome says what the lapsed membership released: his raised hand.
    assert_eq!(back.released(), Some(&Released { hand: true, grace_secs: Some(1), ..Released::default() }));
    all.push(back);
    let state = settle(&mut all, |s| s.members.len() == 3).await;
    assert_eq!(queue(&state), [ann]);
}

#[tokio::test]
async fn the_lobby_holds_newcomers_away_from_the_board_until_admitted() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({"lobby": true})).await;
    let mut leader = YClient::join(&server.ws_url(&room.id, &room.leader_token, "Lea")).await.unwrap();
    assert!(leader.latest_state().unwrap().lobby);
    // A co-leader (leaders never wait) witnesses what the server holds.
    let mut co = YClient::join(&server.ws_url(&room.id, &room.leader_token, "Co")).await.unwrap();
    leader.type_text("CONFIDENTIAL case notes").await.unwrap();
    co.wait_until(|c| c.notes() == "CONFIDENTIAL case notes").await.unwrap();

    let mut ann = YClient::join(&server.ws_url(&room.id, &room.invite_token, "Ann")).await.unwrap();
    assert!(!ann.is_admitted(), "the lobby answers `waiting`");
    let ann_id = ann.member_id().unwrap().to_owned();
    // A stock client waits too.
    let mut stock = YClient::connect_pending(&server.ws_url(&room.id, &room.invite_token, "Sam")).await.unwrap();

    let state = leader.wait_state(|s| s.waiting.as_ref().is_some_and(|w| w.len() == 2)).await.unwrap();
    let waiting = state.waiting.clone().unwrap();
    assert_eq!((waiting[0].id.as_str(), waiting[0].name.as_str()), (ann_id.as_str(), "Ann"));
    assert_eq!(waiting[1].name, "Sam");
    let sam_id = waiting[1].id.clone();
    assert!(state.members.iter().all(|m| m.id != ann_id), "the waiting are not members yet");
    co.wait_state(|s| s.waiting.as_ref().is_some_and(|w| w.len() == 2)).await.unwrap();

    // While waiting: commands are refused, and nothing of the board arrives, even as it changes.
    assert_eq!(ann.refused(json!({"type": "raise_hand"})).await.unwrap(), ErrorCode::NotInRoom);
    leader.type_text(", more").await.unwrap();
    co.wait_until(|c| c.notes() == "CONFIDENTIAL case notes, more").await.unwrap();
    leader.command(json!({"type": "decline", "member": sam_id})).await.unwrap();
    let closed = stock.wait_closed().await.unwrap();
    assert_eq!(closed.code, close::REMOVED);
    assert_eq!((stock.binary_frames, stock.notes().as_str()), (0, ""), "a declined client got nothing");
    leader.wait_state(|s| s.waiting.as_ref().is_some_and(|w| w.len() == 1)).await.unwrap();

    // Admitted: `welcome` first, with nothing of the board before it; then the whole board.
    leader.command(json!({"type": "admit", "member": ann_id})).await.unwrap();
    ann.wait_until(|c| c.is_admitted()).await.unwrap();
    assert_eq!(ann.binary_frames, 0, "no board frame before `welcome`");
    assert_eq!(ann.notes(), "");
    let kinds: Vec<&str> = ann
        .texts
        .iter()
        .map(|m| match m {
            ServerMessage::Waiting { .. } => "waiting",
            ServerMessage::Error { .. } => "error",
            ServerMessage::Welcome { .. } => "welcome",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["waiting", "error", "welcome"]);
    assert_eq!(ann.member_id(), Some(ann_id.as_str()));
    ann.wait_until(|c| c.is_synced() && c.notes() == "CONFIDENTIAL case notes, more").await.unwrap();
    let state = leader.wait_state(|s| s.members.iter().any(|m| m.id == ann_id)).await.unwrap();
    assert_eq!(state.waiting, Some(vec![]));

    // Now a member like any other: her edits flow.
    ann.type_text(" / Ann").await.unwrap();
    co.wait_until(|c| c.notes() == "CONFIDENTIAL case notes, more / Ann").await.unwrap();
}

#[tokio::test]
async fn two_leaders_calling_the_next_speaker_at_once_give_the_floor_once() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let (mut all, ids) = session(&server, &room, &["Ann", "Ben"]).await;
    let (ann, ben) = (ids[ANN].as_str(), ids[BEN].as_str());
    all.push(YClient::join(&server.ws_url(&room.id, &room.leader_token, "Co")).await.unwrap());
    let co = all.len() - 1;
    settle(&mut all, |s| s.members.len() == 4).await;
    for (i, who) in [ANN, BEN].into_iter().enumerate() {
        all[who].command(json!({"type": "raise_hand"})).await.unwrap();
        settle(&mut all, |s| s.queue.len() == i + 1).await;
    }
    // Both leaders look at the same version and click "next".
    let seen = all[LEA].latest_state().unwrap().version;
    assert_eq!(all[co].latest_state().unwrap().version, seen);
    all[LEA].command(json!({"type": "next_speaker", "if_version": seen})).await.unwrap();
    let state = settle(&mut all, |s| s.floor.is_some()).await;
    assert_eq!(floor(&state), Some(ann));
    let refusal = all[co].refused(json!({"type": "next_speaker", "if_version": seen})).await.unwrap();
    assert_eq!(refusal, ErrorCode::Conflict);
    let refusal = all[co].refused(json!({"type": "grant_floor", "member": ben, "if_version": seen})).await.unwrap();
    assert_eq!(refusal, ErrorCode::Conflict);
    // Looking at the current version, the co-leader may act.
    all[co].command(json!({"type": "next_speaker", "if_version": state.version})).await.unwrap();
    let state = settle(&mut all, |s| floor(s) == Some(ben)).await;
    assert!(state.queue.is_empty());
}

#[tokio::test]
async fn a_leader_lets_everyone_in_at_once_and_a_phase_change_leaves_no_hands_or_floor() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({"lobby": true})).await;
    let mut lea = YClient::join(&server.ws_url(&room.id, &room.leader_token, "Lea")).await.unwrap();
    assert!(lea.latest_state().unwrap().phase_reset, "on by default");
    let mut ann = YClient::join(&server.ws_url(&room.id, &room.invite_token, "Ann")).await.unwrap();
    let mut ben = YClient::join(&server.ws_url(&room.id, &room.invite_token, "Ben")).await.unwrap();
    assert!(!ann.is_admitted() && !ben.is_admitted());
    lea.wait_state(|s| s.waiting.as_ref().is_some_and(|w| w.len() == 2)).await.unwrap();

    lea.command(json!({"type": "admit_all"})).await.unwrap();

    ann.wait_until(|c| c.is_admitted() && c.is_synced()).await.unwrap();
    ben.wait_until(|c| c.is_admitted() && c.is_synced()).await.unwrap();
    let state = lea.wait_state(|s| s.members.len() == 3).await.unwrap();
    assert_eq!(state.waiting, Some(vec![]));
    assert!(state.lobby, "the lobby stays on");
    assert!(state.members.iter().all(|m| m.joined_at_ms > 0), "every member carries an arrival time");
    // Nobody waits now: the refusal says so.
    let before = lea.texts.len();
    assert_eq!(lea.refused(json!({"type": "admit_all"})).await.unwrap(), ErrorCode::Conflict);
    let reason = lea.texts[before..].iter().find_map(|m| match m {
        ServerMessage::Error { reason, .. } => *reason,
        _ => None,
    });
    assert_eq!(reason, Some(balint_proto::rules::Reason::NobodyWaiting));

    // Hands up and a speaker in the questions; then the reflection starts clean.
    let ann_id = ann.member_id().unwrap().to_owned();
    let mut all = vec![lea, ann, ben];
    all[LEA].command(json!({"type": "set_phase", "phase": "questions"})).await.unwrap();
    all[ANN].command(json!({"type": "raise_hand"})).await.unwrap();
    all[BEN].command(json!({"type": "raise_hand"})).await.unwrap();
    settle(&mut all, |s| s.phase.name == Phase::Questions && s.queue.len() == 2).await;
    all[LEA].command(json!({"type": "next_speaker"})).await.unwrap();
    let state = settle(&mut all, |s| s.floor.is_some()).await;
    assert_eq!(floor(&state), Some(ann_id.as_str()));

    all[LEA].command(json!({"type": "set_phase", "phase": "reflection"})).await.unwrap();
    let state = settle(&mut all, |s| s.phase.name == Phase::Reflection).await;
    assert!(state.queue.is_empty(), "the hands of the questions are down");
    assert_eq!(state.floor, None, "the floor is free");

    // With the reset off, hands carry over.
    all[LEA].command(json!({"type": "set_phase_reset", "enabled": false})).await.unwrap();
    settle(&mut all, |s| !s.phase_reset).await;
    all[BEN].command(json!({"type": "raise_hand"})).await.unwrap();
    settle(&mut all, |s| s.queue.len() == 1).await;
    all[LEA].command(json!({"type": "set_phase", "phase": "closing"})).await.unwrap();
    let state = settle(&mut all, |s| s.phase.name == Phase::Closing).await;
    assert_eq!(state.queue.len(), 1, "Ben's hand carried over");
}
