//! Controls that stick: fresh links at any time, renewed links that shut out newcomers with
//! old ones, revoked resume tokens, a secret rotation, and a lapsed membership told what it
//! lost.

use balint_e2e::{eventually, handshake_status, TestServer, YClient};
use balint_proto::close;
use balint_proto::room::{Released, Role};
use balint_server::token::Signer;
use serde_json::{json, Value};

const SECRET: &str = "the secret these test nodes sign their links with";
const PREVIOUS: &str = "the secret these test nodes signed links with before";

/// `POST /api/rooms/{room}/links` with `token` as a Bearer token and `body` as it is.
async fn post_links(server: &TestServer, room: &str, token: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/rooms/{room}/links", server.base()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// Issues links and returns the answer, which must be 200.
async fn issue(server: &TestServer, room: &str, token: &str, renew: bool) -> Value {
    let response = post_links(server, room, token, &json!({ "renew": renew }).to_string()).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn text<'a>(json: &'a Value, field: &str) -> &'a str {
    json[field].as_str().unwrap_or_else(|| panic!("{field} is a string in {json}"))
}

#[tokio::test]
async fn a_leader_issues_fresh_links_and_others_are_refused() {
    let server = TestServer::start().await;
    for ephemeral in [true, false] {
        let room = server.create_room(json!({ "ephemeral": ephemeral })).await;
        let links = issue(&server, &room.id, &room.leader_token, false).await;
        assert_eq!(links["room"], room.id.as_str());
        assert_eq!(links["generation"], 0);
        assert!(links["expires_at"].as_u64().unwrap() >= room.json["expires_at"].as_u64().unwrap());
        for role in ["leader", "invite", "observer"] {
            let token = text(&links, &format!("{role}_token"));
            let url = text(&links, &format!("{role}_url"));
            assert_eq!(url, format!("{}/r/{}#t={token}", server.base(), room.id), "{role}");
        }
        let member = YClient::join(&server.ws_url(&room.id, text(&links, "invite_token"), "Ann")).await.unwrap();
        assert_eq!(member.role(), Some(Role::Member));
        let observer = YClient::join(&server.ws_url(&room.id, text(&links, "observer_token"), "Obi")).await.unwrap();
        assert_eq!(observer.role(), Some(Role::Observer));
        // An empty body is `{}`.
        let empty = post_links(&server, &room.id, &room.leader_token, "").await;
        assert_eq!(empty.status(), 200);
    }

    let room = server.create_room(json!({})).await;
    let post = |token: &str, body: &'static str| {
        let (server, id, token) = (&server, room.id.clone(), token.to_owned());
        async move { post_links(server, &id, &token, body).await.status().as_u16() }
    };
    assert_eq!(post("", "{}").await, 401, "no token");
    assert_eq!(post("v2.garbage.garbage.garbage", "{}").await, 401);
    assert_eq!(post(&room.invite_token, "{}").await, 403, "a member may not issue links");
    assert_eq!(post(&room.observer_token, r#"{"renew":true}"#).await, 403);
    let leader = room.leader_token.as_str();
    for body in [r#"[true]"#, r#""renew""#, r#"{"renew":"yes"}"#, r#"{"renew":true,"role":"leader"}"#, "{"] {
        assert_eq!(post(leader, body).await, 400, "{body}");
    }
    let other = server.create_room(json!({})).await;
    assert_eq!(post_links(&server, &other.id, leader, "{}").await.status(), 401, "another room's token");
    assert_eq!(post_links(&server, "no-such-room!", leader, "{}").await.status(), 404);
    // An ended meeting issues nothing.
    let mut lead = YClient::join(&server.ws_url(&room.id, leader, "Lea")).await.unwrap();
    lead.command(json!({"type": "end_meeting"})).await.unwrap();
    lead.wait_closed().await.unwrap();
    assert_eq!(post(leader, "{}").await, 410);
}

#[tokio::test]
async fn renewed_links_shut_out_newcomers_with_old_ones_while_members_carry_on() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let old_invite = server.ws_url(&room.id, &room.invite_token, "Ann");
    let mut leader = YClient::join(&server.ws_url(&room.id, &room.leader_token, "Lea")).await.unwrap();
    let mut ann = YClient::join(&old_invite).await.unwrap();
    let ann_id = ann.member_id().unwrap().to_owned();
    let ann_token = ann.resume_token().unwrap().to_owned();

    let links = issue(&server, &room.id, &room.leader_token, true).await;
    assert_eq!(links["generation"], 1);
    // Links issued without renewing are of the room's current generation.
    assert_eq!(issue(&server, &room.id, &room.leader_token, false).await["generation"], 1);

    // Ann, present, carries on: she writes and the leader sees it.
    ann.type_text("present before the renewal").await.unwrap();
    leader.wait_until(|c| c.notes() == "present before the renewal").await.unwrap();
    // She drops and resumes with her old link within the grace period: the same member.
    ann.drop_connection();
    let back = YClient::join_resuming(&old_invite, Some(&ann_token)).await.unwrap();
    assert_eq!(back.member_id(), Some(ann_id.as_str()));

    // A newcomer with the old invite link is refused with 4412, with hello or as a stock client;
    // the upgrade itself succeeds, since a resume could follow it.
    for url in [old_invite.clone(), server.ws_url(&room.id, &room.observer_token, "Obi")] {
        let mut newcomer = YClient::hello_only(&url, None).await.unwrap();
        assert_eq!(newcomer.wait_closed().await.unwrap().code, close::LINK_RENEWED, "{url}");
        let mut stock = YClient::connect_pending(&url).await.unwrap();
        assert_eq!(stock.wait_closed().await.unwrap().code, close::LINK_RENEWED, "stock client on {url}");
    }
    let state = leader.wait_state(|s| s.members.len() == 2).await.unwrap();
    assert_eq!(state.members.len(), 2, "nobody joined on an old link");

    // The new links let newcomers in; the old leader link still works.
    let ben = YClient::join(&server.ws_url(&room.id, text(&links, "invite_token"), "Ben")).await.unwrap();
    assert_eq!(ben.role(), Some(Role::Member));
    let co = YClient::join(&server.ws_url(&room.id, &room.leader_token, "Co")).await.unwrap();
    assert_eq!(co.role(), Some(Role::Leader));
}

#[tokio::test]
async fn a_removed_members_resume_token_is_refused() {
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let invite = server.ws_url(&room.id, &room.invite_token, "Ann");
    let mut leader = YClient::join(&server.ws_url(&room.id, &room.leader_token, "Lea")).await.unwrap();
    let mut ann = YClient::join(&invite).await.unwrap();
    let ann_id = ann.member_id().unwrap().to_owned();
    let token = ann.resume_token().unwrap().to_owned();
    leader.command(json!({"type": "kick", "member": ann_id})).await.unwrap();
    assert_eq!(ann.wait_closed().await.unwrap().code, close::REMOVED);

    // She reopens the same link: her client resumes with its token, and is refused.
    let mut again = YClient::hello_only(&invite, Some(&token)).await.unwrap();
    assert_eq!(again.wait_closed().await.unwrap().code, close::REMOVED);
    assert!(again.member_id().is_none(), "no welcome");
    let state = leader.wait_state(|s| s.members.len() == 1).await.unwrap();
    assert!(state.members.iter().all(|m| m.id != ann_id));

    // Removing and renewing shuts the link itself: a fresh client with the old link is refused.
    issue(&server, &room.id, &room.leader_token, true).await;
    let mut fresh = YClient::hello_only(&invite, None).await.unwrap();
    assert_eq!(fresh.wait_closed().await.unwrap().code, close::LINK_RENEWED);
}

#[tokio::test]
async fn a_leader_link_near_expiry_gets_fresh_links_that_work() {
    let server = TestServer::start_with(|c| c.secret = Some(SECRET.to_owned())).await;
    let room = server.create_room(json!({ "ephemeral": false })).await;
    // A leader link about to expire, as a 30-day link is on its last day.
    let expiring = Signer::new(SECRET.as_bytes()).issue(&room.id, Role::Leader, balint_server::unix_now() + 2);
    let links = issue(&server, &room.id, &expiring, false).await;
    let fresh_leader = text(&links, "leader_token").to_owned();
    assert!(links["expires_at"].as_u64().unwrap() > balint_server::unix_now() + 3600);

    let old_url = server.ws_url(&room.id, &expiring, "Lea");
    eventually(|| async { handshake_status(&old_url).await == 401 }).await.unwrap();
    assert_eq!(post_links(&server, &room.id, &expiring, "{}").await.status(), 401);
    // The fresh links work after the old one expired.
    let leader = YClient::join(&server.ws_url(&room.id, &fresh_leader, "Lea")).await.unwrap();
    assert_eq!(leader.role(), Some(Role::Leader));
    let member = YClient::join(&server.ws_url(&room.id, text(&links, "invite_token"), "Ann")).await.unwrap();
    assert_eq!(member.role(), Some(Role::Member));
    assert_eq!(post_links(&server, &room.id, &fresh_leader, "{}").await.status(), 200);
}

#[tokio::test]
async fn a_secret_rotation_keeps_old_links_working_until_fresh_ones_are_issued() {
    let data = tempfile::tempdir().unwrap();
    let node = |secret: &str, previous: &[&str]| {
        let (data, secret) = (data.path().to_path_buf(), secret.to_owned());
        let previous: Vec<String> = previous.iter().map(|s| (*s).to_owned()).collect();
        TestServer::start_with(move |c| {
            c.data_dir = data;
            c.secret = Some(secret);
            c.previous_secrets = previous;
        })
    };
    // Before the rotation: a persistent room and its links, signed with the old secret.
    let before = node(PREVIOUS, &[]).await;
    let room = before.create_room(json!({ "ephemeral": false })).await;
    before.stop().await;

    // During it: the new secret signs, the previous one is still accepted.
    let rotating = node(SECRET, &[PREVIOUS]).await;
    assert_eq!(handshake_status(&rotating.ws_url(&room.id, &room.invite_token, "Ann")).await, 101);
    let links = issue(&rotating, &room.id, &room.leader_token, false).await;
    let now = balint_server::unix_now();
    for role in ["leader_token", "invite_token", "observer_token"] {
        let fresh = text(&links, role);
        assert!(
            Signer::new(SECRET.as_bytes()).verify(fresh, &room.id, now).is_ok(),
            "{role} signed with the new secret"
        );
        assert!(Signer::new(PREVIOUS.as_bytes()).verify(fresh, &room.id, now).is_err());
    }
    rotating.stop().await;

    // After it: the previous secret is dropped; its links are refused, the fresh ones work.
    let after = node(SECRET, &[]).await;
    assert_eq!(handshake_status(&after.ws_url(&room.id, &room.invite_token, "Ann")).await, 401);
    assert_eq!(post_links(&after, &room.id, &room.leader_token, "{}").await.status(), 401);
    let member = YClient::join(&after.ws_url(&room.id, text(&links, "invite_token"), "Ann")).await.unwrap();
    assert_eq!(member.role(), Some(Role::Member));
    assert_eq!(post_links(&after, &room.id, text(&links, "leader_token"), "{}").await.status(), 200);
}

#[tokio::test]
async fn a_member_back_after_the_grace_period_is_told_what_was_released() {
    let server = TestServer::start_with(|c| c.reconnect_grace_secs = 1).await;
    let room = server.create_room(json!({})).await;
    let mut leader = YClient::join(&server.ws_url(&room.id, &room.leader_token, "Lea")).await.unwrap();
    let url = server.ws_url(&room.id, &room.invite_token, "Ann");
    let mut ann = YClient::join(&url).await.unwrap();
    let ann_id = ann.member_id().unwrap().to_owned();
    let token = ann.resume_token().unwrap().to_owned();
    ann.command(json!({"type": "raise_hand"})).await.unwrap();
    leader.wait_state(|s| s.queue.len() == 1).await.unwrap();
    leader.command(json!({"type": "pick_presenter", "member": ann_id})).await.unwrap();
    leader.wait_state(|s| s.presenter.is_some()).await.unwrap();
    ann.drop_connection();
    leader.wait_state(|s| s.members.len() == 1).await.unwrap();

    let back = YClient::join_resuming(&url, Some(&token)).await.unwrap();
    assert_ne!(back.member_id(), Some(ann_id.as_str()));
    // With the room's grace period (1 s here), so that the page can say how long a place is kept.
    let released = Released { hand: true, floor: false, presenter: true, role: None, grace_secs: Some(1) };
    assert_eq!(back.released(), Some(&released));
}
