//! A member's network stalls without closing (a laptop that sleeps, Wi-Fi that stops forwarding):
//! both sides notice within their documented bounds, and what the member typed meanwhile
//! arrives once the network is back.
//!
//! The member is the web client's own connection logic (`balint_client::Session`), driven
//! natively with real sockets and real time (`balint_e2e::session_driver`), behind a loopback
//! TCP proxy that stops forwarding in both directions without closing either side
//! (`balint_e2e::proxy`). The leader is the same client, connected directly.
//!
//! The bounds, as README.md documents them:
//! - the server pings a connection it has heard nothing from for 8.3 s, and takes one that has
//!   answered nothing, not even a pong, for 25 s for lost: the others see the member
//!   `reconnecting` within 27.5 s (the test allows 30 s);
//! - the client takes a socket on which it heard nothing (not even a heartbeat, sent every 5 s)
//!   for 15 s (`SILENCE_LIMIT_MS`) for stalled, shows `reconnecting` and reconnects.

use std::time::Duration;

use balint_client::board::TextKey;
use balint_client::session::{ConnectionStatus, Event, Reason, Session};
use balint_e2e::proxy::StallProxy;
use balint_e2e::session_driver::SessionDriver;
use balint_e2e::{TestServer, DEADLINE};
use balint_proto::room::{Status, SILENCE_LIMIT_MS};
use tokio::time::Instant;

/// How long the server may take to show a stalled member as reconnecting.
const SERVER_BOUND: Duration = Duration::from_secs(30);
/// How long the client may take to notice a silent server.
const CLIENT_BOUND: Duration = Duration::from_millis(SILENCE_LIMIT_MS);
/// Timers and scheduling on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(3);

fn status_of(session: &Session, member: &str) -> Option<Status> {
    session.state()?.members.iter().find(|m| m.id == member).map(|m| m.status)
}

fn reconnecting_for_no_answer(events: &[Event]) -> bool {
    events.iter().any(|e| {
        matches!(e, Event::Connection { status: ConnectionStatus::Reconnecting, reason: Some(Reason::NoAnswer), .. })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_member_is_noticed_on_both_sides_and_their_edits_arrive_after() -> anyhow::Result<()> {
    let server = TestServer::start().await;
    let room = server.create_room(serde_json::json!({"title": "Tuesday"})).await;
    let proxy = StallProxy::start(server.addr).await?;

    let leader = SessionDriver::start(&server.ws_url(&room.id, &room.leader_token, "Lea"));
    let member_url = format!("ws://{}/ws/{}?token={}&name=Ann", proxy.addr, room.id, room.invite_token);
    let member = SessionDriver::start(&member_url);
    member.wait_for("the member is in the room", DEADLINE, |s, _| s.is_connected()).await?;
    let member_id = member.read(|s| s.member_id().expect("welcomed").to_owned());
    leader
        .wait_for("the leader sees the member here", DEADLINE, |s, _| {
            s.is_connected() && status_of(s, &member_id) == Some(Status::Here)
        })
        .await?;

    let before = "Before the stall. ";
    member.act(|s| s.edit_text(&TextKey::Notes, before, None))?;
    leader.wait_for("the leader has the first edit", DEADLINE, |s, _| s.board().notes() == before).await?;

    // The network stops forwarding; neither side is told.
    proxy.stall();
    let stalled_at = Instant::now();
    let as_it_stalled = format!("{before}Typed as it stalled. ");
    member.act(|s| s.edit_text(&TextKey::Notes, &as_it_stalled, None))?;

    // (b) The member's own screen says reconnecting, and why, within the client's bound.
    member
        .wait_for("the member's session reports reconnecting", CLIENT_BOUND + MARGIN, |_, events| {
            reconnecting_for_no_answer(events)
        })
        .await?;
    assert!(stalled_at.elapsed() <= CLIENT_BOUND + MARGIN, "the client noticed after {:?}", stalled_at.elapsed());
    assert!(!member.read(Session::is_connected), "commands wait until the member is back");

    // The member keeps typing while reconnecting: the board keeps it.
    let while_reconnecting = format!("{as_it_stalled}Typed while reconnecting.");
    member.act(|s| s.edit_text(&TextKey::Notes, &while_reconnecting, None))?;

    // (a) The leader sees the member reconnecting, within the server's bound.
    let left = (SERVER_BOUND + MARGIN).saturating_sub(stalled_at.elapsed());
    leader
        .wait_for("the leader sees the member reconnecting", left, |s, _| {
            status_of(s, &member_id) == Some(Status::Reconnecting)
        })
        .await?;
    assert!(leader.read(|s| s.board().notes()) == before, "nothing typed during the stall has arrived yet");

    // The network comes back for new connections. The member's session reconnects by itself:
    // the attempt that is stuck gives up after the silence limit, the next one goes through.
    proxy.heal();
    member.wait_for("the member is back in the room", CLIENT_BOUND + DEADLINE, |s, _| s.is_connected()).await?;
    assert_eq!(member.read(|s| s.member_id().map(str::to_owned)), Some(member_id.clone()), "the same member");
    leader
        .wait_for("the leader has what the member typed during the stall", DEADLINE, |s, _| {
            s.board().notes() == while_reconnecting
        })
        .await?;
    leader
        .wait_for("the leader sees the member here again", DEADLINE, |s, _| {
            status_of(s, &member_id) == Some(Status::Here)
        })
        .await?;
    assert_eq!(member.read(|s| s.board().notes()), while_reconnecting);

    member.stop().await;
    leader.stop().await;
    proxy.stop().await;
    server.stop().await;
    Ok(())
}

/// A quiet room is not a stalled network: the server's heartbeats keep an idle client's
/// connection alive past the silence limit, with nobody typing or sending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_member_in_a_quiet_room_stays_connected() -> anyhow::Result<()> {
    let server = TestServer::start().await;
    let room = server.create_room(serde_json::json!({})).await;
    let member = SessionDriver::start(&server.ws_url(&room.id, &room.invite_token, "Ann"));
    member.wait_for("the member is in the room", DEADLINE, |s, _| s.is_connected()).await?;
    let joined = member.events().len();

    // Time passing is the scenario here: longer than the silence limit, with nothing to say.
    tokio::time::sleep(CLIENT_BOUND + MARGIN + MARGIN).await;

    let since: Vec<Event> = member.events().split_off(joined);
    assert!(
        !since.iter().any(|e| matches!(e, Event::Connection { .. })),
        "the connection changed although the network was fine: {since:?}"
    );
    assert!(member.read(Session::is_connected));
    member.stop().await;
    server.stop().await;
    Ok(())
}
