//! Ephemeral meetings: how they end, and that nothing comes back after.

use balint_e2e::handshake_status;
use balint_e2e::{eventually, TestServer, YClient};
use balint_proto::close;
use serde_json::json;

#[tokio::test]
async fn a_meeting_left_empty_past_its_grace_period_ends_and_stays_ended() {
    let server = TestServer::start_with(|c| {
        c.reconnect_grace_secs = 1;
        c.empty_grace_secs = 1;
    })
    .await;
    let room = server.create_room(json!({})).await;
    let url = server.ws_url(&room.id, &room.invite_token, "ada");
    let mut ada = YClient::join(&url).await.unwrap();
    ada.type_text("a confidential detail").await.unwrap();
    let resume = ada.resume_token().unwrap().to_owned();
    ada.close().await;

    // Empty for longer than the grace period: the meeting ends, and the room answers 410.
    eventually(|| async { handshake_status(&url).await == 410 }).await.unwrap();
    // Coming back with the old resume token changes nothing: never an empty fresh board.
    let resumed = format!("{url}&resume={resume}");
    assert_eq!(handshake_status(&resumed).await, 410);
    let leader = server.ws_url(&room.id, &room.leader_token, "lena");
    assert_eq!(handshake_status(&leader).await, 410);
}

#[tokio::test]
async fn members_who_reconnect_after_the_end_get_410() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut lead = YClient::join(&server.ws_url(&room.id, &room.leader_token, "lena")).await.unwrap();
    let mut ann = YClient::join(&server.ws_url(&room.id, &room.invite_token, "ann")).await.unwrap();
    ann.type_text("notes that must not survive").await.unwrap();
    lead.wait_until(|c| c.notes().contains("must not survive")).await.unwrap();

    lead.command(json!({"type": "end_meeting"})).await.unwrap();
    assert_eq!(ann.wait_closed().await.unwrap().code, close::MEETING_ENDED);
    assert_eq!(lead.wait_closed().await.unwrap().code, close::MEETING_ENDED);
    for token in [&room.invite_token, &room.leader_token, &room.observer_token] {
        assert_eq!(handshake_status(&server.ws_url(&room.id, token, "again")).await, 410);
    }
}
