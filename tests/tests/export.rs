//! A leader's Markdown export of a persistent room: the server builds it for a plain room; for
//! a sealed room, whose board the server cannot read, the leader's page builds it from the
//! board it decrypted. Both run `balint_proto::board`, and give the same file for the same
//! meeting. The web client's own session is driven natively with real sockets.

use balint_client::board::TextKey;
use balint_client::seal::RoomKey;
use balint_client::session::Session;
use balint_e2e::session_driver::SessionDriver;
use balint_e2e::{eventually, Room, TestServer, DEADLINE};
use balint_proto::room::{ClientMessage, Phase};
use serde_json::{json, Value};

/// A leader and a member hold the same meeting in `room`: notes, and cards in two phases.
/// Returns the Markdown the leader's page exports at the end.
async fn hold_meeting(server: &TestServer, room: &Room, key: Option<&RoomKey>) -> anyhow::Result<String> {
    let join = |token: &str, name: &str| {
        match key {
            // A sealed client's name travels sealed, never in the URL.
            Some(key) => SessionDriver::start_session(
                &format!("ws://{}/ws/{}?token={token}&sealed=1", server.addr, room.id),
                Session::sealed(None, &room.id, key.clone(), name).expect("random numbers"),
            ),
            None => SessionDriver::start(&server.ws_url(&room.id, token, name)),
        }
    };
    let export = |s: &Session| s.export_markdown(s.state().and_then(|state| state.title.as_deref()));
    let leader = join(&room.leader_token, "Lea");
    let member = join(&room.invite_token, "Ann");
    for driver in [&leader, &member] {
        driver.wait_for("in the room, with the whole board", DEADLINE, |s, _| export(s).is_some()).await?;
    }

    member.act(|s| s.edit_text(&TextKey::Notes, "Frau K. rief nachts an.\nZweimal.", None))?;
    member.act(|s| s.add_card("a1", "Wer war noch da?", 1_000))?;
    leader.wait_for("the leader has the first card", DEADLINE, |s, _| s.board().cards().len() == 1).await?;
    leader.act(|s| s.command(ClientMessage::SetPhase { phase: Phase::Reflection, duration_secs: None }))?;
    member
        .wait_for("the member is in reflection", DEADLINE, |s, _| {
            s.state().is_some_and(|state| state.phase.name == Phase::Reflection)
        })
        .await?;
    member.act(|s| s.add_card("a2", "Wut im Raum", 3_000))?;
    leader.act(|s| s.add_card("l1", "Die Müdigkeit der Ärztin", 2_000))?;
    leader
        .wait_for("the leader has every card", DEADLINE, |s, _| {
            s.board().cards().len() == 3 && s.board().notes().contains("Zweimal")
        })
        .await?;
    let markdown = leader.read(export).expect("the leader's page holds the whole board");
    member.stop().await;
    leader.stop().await;
    Ok(markdown)
}

async fn server_export(server: &TestServer, room: &Room) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("{}/api/rooms/{}/export.md", server.base(), room.id))
        .bearer_auth(&room.leader_token)
        .send()
        .await
        .expect("export");
    (response.status().as_u16(), response.text().await.expect("body"))
}

#[tokio::test]
async fn a_sealed_rooms_export_from_the_leaders_page_is_the_file_the_server_gives_for_a_plain_room(
) -> anyhow::Result<()> {
    let server = TestServer::start().await;
    let body = json!({"title": "Dienstag", "ephemeral": false});

    // A plain room: the server exports it, and the leader's page would export the same file.
    let plain = server.create_room(body.clone()).await;
    let in_page = hold_meeting(&server, &plain, None).await?;
    eventually(|| async { server_export(&server, &plain).await == (200, in_page.clone()) })
        .await
        .map_err(|e| anyhow::anyhow!("the server's export never matched the page's {in_page:?}: {e}"))?;
    assert_eq!(
        in_page,
        "# Dienstag\n\n## Notes\n\nFrau K. rief nachts an.\nZweimal.\n\n## Observations\n\
         \n### Gathering\n\n- **Ann**: Wer war noch da?\n\
         \n### Reflection\n\n- **Lea**: Die Müdigkeit der Ärztin\n- **Ann**: Wut im Raum\n"
    );

    // The same meeting in a sealed room: the server refuses to export what it cannot read,
    // and the leader's page builds the same file from the board it decrypted.
    // Its title travels sealed: set after the room exists, sealed with its id.
    let sealed = server.create_room(json!({"ephemeral": false, "sealed": true})).await;
    let key = RoomKey::generate()?;
    let titled = reqwest::Client::new()
        .put(format!("{}/api/rooms/{}/title", server.base(), sealed.id))
        .bearer_auth(&sealed.leader_token)
        .json(&json!({"sealed_title": balint_e2e::sealed_client::seal_title(&key, &sealed.id, "Dienstag")}))
        .send()
        .await?;
    assert_eq!(titled.status(), 204);
    let sealed_in_page = hold_meeting(&server, &sealed, Some(&key)).await?;
    let (status, answer) = server_export(&server, &sealed).await;
    assert_eq!(status, 409);
    assert_eq!(serde_json::from_str::<Value>(&answer)?["error"], "sealed");
    assert_eq!(sealed_in_page, in_page);
    Ok(())
}
