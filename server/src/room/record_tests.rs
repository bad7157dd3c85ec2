//! Tests of the stored formats: objects written before formats were numbered (literal JSON,
//! as the builds before this module wrote them) still read, everything round-trips, and bad
//! input is an error that names no content, never a panic.

use balint_proto::room::{Phase, Role, Template};

use super::*;
use crate::room::meeting::{Meeting, MeetingSettings};

/// A live meeting's record as written before formats were numbered: members here, away,
/// dropped; a hand up, the floor with a limit and `time_up_sent`, a kicked member, a renewed
/// link, a lapsed presenter.
const LIVE: &str = r#"{"title":"Tuesday group","template":"balint","ephemeral":true,"lobby":false,"reconnect_grace_ms":120000,"empty_grace_ms":600000,"max_length_ms":21600000,"max_members":50,"started_at_ms":1700000001000,"empty_since_ms":null,"members":{"7OKl8lamUDo8":{"name":"Obi","role":"observer","resume_token":"7ZgTpL41d6pCU6CYdPVwe0gwVForKMp1","arrival":4,"dropped_at_ms":null,"away":false,"admitted":true,"turns":0,"speaking_ms":0,"spoke_in_phase":false},"AJLdkJC82DAq":{"name":"Lena","role":"leader","resume_token":"TchDIhWBQ3DVmXEM3TQZw5C0w3Kja2sn","arrival":1,"dropped_at_ms":null,"away":false,"admitted":true,"turns":0,"speaking_ms":0,"spoke_in_phase":false},"bTBnKnJKaeVt":{"name":"Ben","role":"member","resume_token":"8PudgIeRB2TLEkdxAWz6Sx00GuXQ0ZQQ","arrival":3,"dropped_at_ms":null,"away":true,"admitted":true,"turns":1,"speaking_ms":0,"spoke_in_phase":false},"iLpz5ThC5flX":{"name":"Ann","role":"member","resume_token":"uGDMz7dGgli3QhU5oDMuJ77qWIxbDDVT","arrival":2,"dropped_at_ms":1700000126000,"away":false,"admitted":true,"turns":0,"speaking_ms":0,"spoke_in_phase":false}},"queue":[{"member":"iLpz5ThC5flX","raised_at_ms":1700000000000,"seq":7}],"floor":{"member":"bTBnKnJKaeVt","since_ms":1700000001000,"limit_secs":90,"time_up_sent":true,"seq":9},"phase":{"name":"questions","started_at_ms":1700000126000,"duration_secs":600},"presenter":null,"speaking_limit_secs":90,"fair_order":true,"board_locked":false,"next_seq":10,"removed":{"Ok1BeUBUL8Cq":"kicked"},"ended":null,"floor_version":14,"link_generation":1,"revoked":["93Oak5rM0Z1QLpJ_E_EBbA"],"lapsed":[{"token":"uU4wwkD8Fqxr6aVWCRCadw","released":{"hand":true,"floor":false,"presenter":true,"role":"member"}}]}"#;
/// The same, in a room with a lobby: a member waiting, one declined, a presenter, the board
/// locked.
const LOBBY: &str = r#"{"title":"Tuesday group","template":"balint","ephemeral":true,"lobby":true,"reconnect_grace_ms":120000,"empty_grace_ms":600000,"max_length_ms":21600000,"max_members":50,"started_at_ms":null,"empty_since_ms":null,"members":{"9tlfyktkr0E0":{"name":"Wes","role":"member","resume_token":"n24n125oE0TtqGo4dOMJiTNc7IBuBcAZ","arrival":3,"dropped_at_ms":null,"away":false,"admitted":false,"turns":0,"speaking_ms":0,"spoke_in_phase":false},"DZs5YdjTWPZF":{"name":"Lena","role":"leader","resume_token":"Jsaj73nOnD0dA9g2MIM11aLMvCGk7UL9","arrival":1,"dropped_at_ms":null,"away":false,"admitted":true,"turns":0,"speaking_ms":0,"spoke_in_phase":false},"Pa0VlX9B0EzA":{"name":"Ann","role":"member","resume_token":"MvgiZV58m7dLhvEOovXUgWq29UhsNvjW","arrival":2,"dropped_at_ms":null,"away":false,"admitted":true,"turns":0,"speaking_ms":0,"spoke_in_phase":false}},"queue":[],"floor":null,"phase":{"name":"reflection","started_at_ms":1700000000000,"duration_secs":2100},"presenter":"Pa0VlX9B0EzA","speaking_limit_secs":null,"fair_order":false,"board_locked":true,"next_seq":4,"removed":{"g6S2wzcPR2nA":"declined"},"ended":null,"floor_version":0,"link_generation":0,"revoked":["O6irXkTrTkzdU24Ix3FVtQ"],"lapsed":[]}"#;
/// The same meeting, ended: what stays of it.
const ENDED: &str = r#"{"title":null,"template":"balint","ephemeral":true,"lobby":false,"reconnect_grace_ms":120000,"empty_grace_ms":600000,"max_length_ms":21600000,"max_members":50,"started_at_ms":1700000001000,"empty_since_ms":null,"members":{},"queue":[],"floor":null,"phase":{"name":"questions","started_at_ms":1700000126000,"duration_secs":600},"presenter":null,"speaking_limit_secs":90,"fair_order":true,"board_locked":false,"next_seq":10,"removed":{},"ended":"ended_by_leader","floor_version":24,"link_generation":1,"revoked":[],"lapsed":[]}"#;
/// A record from before the member limit, link generations, revoked resume tokens and lapsed
/// memberships existed.
const PRE_GENERATIONS: &str = r#"{"title":"Tuesday group","template":"open","ephemeral":true,"lobby":false,"reconnect_grace_ms":120000,"empty_grace_ms":600000,"max_length_ms":21600000,"started_at_ms":null,"empty_since_ms":null,"members":{},"queue":[],"floor":null,"phase":{"name":"discussion","started_at_ms":1700000000000,"duration_secs":5400},"presenter":null,"speaking_limit_secs":null,"fair_order":false,"board_locked":false,"next_seq":0,"removed":{},"ended":null,"floor_version":0}"#;
/// A persistent room's settings as written before formats were numbered.
const SETTINGS: &str =
    r#"{"title":"Tuesday group","ephemeral":false,"template":"open","lobby":true,"link_generation":3}"#;
/// Settings from before link generations existed.
const PRE_GENERATIONS_SETTINGS: &str = r#"{"title":"Tuesday group","ephemeral":false,"template":"open","lobby":true}"#;

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// `old` as this build writes it: the same object, with its format named and the fields
/// added since filled in by their migrations (the phase reset on, each member arrived when
/// the meeting started, or at 0 when that is unknown).
fn with_format(old: &str) -> serde_json::Value {
    let mut value = with_migrations(old);
    value.as_object_mut().unwrap().insert("format".to_owned(), FORMAT.into());
    value
}

/// `old` with the fields added since filled in by their migrations, format left out.
fn with_migrations(old: &str) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_str(old).unwrap();
    let started = value["started_at_ms"].as_u64().unwrap_or(0);
    let object = value.as_object_mut().unwrap();
    object.insert("phase_reset".to_owned(), true.into());
    // Rooms recorded before sealed rooms existed are plain.
    object.insert("sealed".to_owned(), false.into());
    for member in object["members"].as_object_mut().unwrap().values_mut() {
        member.as_object_mut().unwrap().insert("joined_at_ms".to_owned(), started.into());
    }
    value
}

#[test]
fn records_written_before_formats_were_numbered_read_whole() {
    for old in [LIVE, LOBBY, ENDED] {
        let shared = decode(old.as_bytes()).unwrap();
        // Nothing is lost or changed: written again, it is the same object, format added.
        assert_eq!(json(&encode(&shared).unwrap()), with_format(old));
        assert_eq!(decode(&encode(&shared).unwrap()).unwrap(), shared);
    }
    let live = decode(LIVE.as_bytes()).unwrap();
    assert_eq!(live.title(), Some("Tuesday group"));
    assert_eq!(live.template(), Template::Balint);
    assert!(live.is_ephemeral() && !live.lobby() && !live.is_ended());
    assert_eq!(live.link_generation(), 1);
    assert_eq!(live.max_members, 50);
    assert_eq!(live.members.len(), 4);
    assert!(live.members.values().any(|m| m.name == "Ben" && m.away && m.turns == 1));
    assert!(live.members.values().any(|m| m.name == "Ann" && m.dropped_at_ms == Some(1_700_000_126_000)));
    assert_eq!(live.queue.len(), 1);
    let floor = live.floor.as_ref().unwrap();
    assert_eq!((floor.limit_secs, floor.time_up_sent, floor.seq), (Some(90), true, 9));
    assert_eq!(live.phase.name, Phase::Questions);
    assert_eq!(live.removed.iter().map(|(_, r)| r).collect::<Vec<_>>(), [Removal::Kicked]);
    assert_eq!(live.revoked, ["93Oak5rM0Z1QLpJ_E_EBbA"]);
    let released = &live.lapsed[0].released;
    assert!(released.hand && !released.floor && released.presenter);
    assert_eq!(released.role, Some(Role::Member));

    let lobby = decode(LOBBY.as_bytes()).unwrap();
    assert!(lobby.lobby() && lobby.board_locked);
    assert!(lobby.members.values().any(|m| m.name == "Wes" && !m.admitted));
    assert_eq!(lobby.removed.iter().map(|(_, r)| r).collect::<Vec<_>>(), [Removal::Declined]);
    assert!(lobby.presenter.is_some());

    let ended = decode(ENDED.as_bytes()).unwrap();
    assert!(ended.is_ended());
    assert!(ended.members.is_empty() && ended.title().is_none());
    assert_eq!(ended.ended.as_deref(), Some("ended_by_leader"));
}

#[test]
fn removals_keep_their_order_through_the_record() {
    // Newest last, whatever the ids' order: the bound drops the oldest.
    let record =
        LOBBY.replace(r#""removed":{"g6S2wzcPR2nA":"declined"}"#, r#""removed":{"zz":"kicked","aa":"declined"}"#);
    let shared = decode(record.as_bytes()).unwrap();
    assert_eq!(shared.removed.iter().collect::<Vec<_>>(), [("zz", Removal::Kicked), ("aa", Removal::Declined)]);
    let written = String::from_utf8(encode(&shared).unwrap().to_vec()).unwrap();
    assert!(written.contains(r#""removed":{"zz":"kicked","aa":"declined"}"#), "{written}");
    assert_eq!(decode(written.as_bytes()).unwrap(), shared);
}

#[test]
fn records_from_before_the_member_limit_and_link_generations_read_as_the_defaults() {
    let shared = decode(PRE_GENERATIONS.as_bytes()).unwrap();
    assert_eq!(shared.max_members, crate::limits::MAX_MEMBERS);
    assert_eq!(shared.link_generation(), 0);
    assert!(shared.revoked.is_empty() && shared.lapsed.is_empty());
    assert_eq!(shared.template(), Template::Open);
    let written = json(&encode(&shared).unwrap());
    assert_eq!(written["max_members"], crate::limits::MAX_MEMBERS);
    assert_eq!(written["format"], FORMAT);
}

#[test]
fn a_record_written_now_is_todays_layout_plus_its_format() {
    // Older builds ignore fields they do not know, so they read what this one writes.
    let shared = decode(LIVE.as_bytes()).unwrap();
    let mut written = json(&encode(&shared).unwrap());
    assert_eq!(written.as_object_mut().unwrap().remove("format"), Some(FORMAT.into()));
    assert_eq!(written, with_migrations(LIVE));
}

#[test]
fn records_from_before_the_phase_reset_and_arrival_times_read_as_their_defaults() {
    let live = decode(LIVE.as_bytes()).unwrap();
    assert!(live.phase_reset, "the phase reset reads as on, its default");
    assert!(live.members.values().all(|m| m.joined_at_ms == 1_700_000_001_000), "arrived at the meeting's start");
    // A room whose start was not recorded: arrival unknown, which the protocol says as 0.
    let lobby = decode(LOBBY.as_bytes()).unwrap();
    assert!(lobby.members.values().all(|m| m.joined_at_ms == 0));
    let view = Meeting::from_shared(live, 3).state(true);
    assert!(view.phase_reset);
    assert!(view.members.iter().all(|m| m.joined_at_ms == 1_700_000_001_000));

    // Written now, both stay as they are.
    let mut shared = decode(LIVE.as_bytes()).unwrap();
    shared.phase_reset = false;
    shared.members.values_mut().next().unwrap().joined_at_ms = 1_700_000_000_500;
    let again = decode(&encode(&shared).unwrap()).unwrap();
    assert_eq!(again, shared);
    assert!(!again.phase_reset);
}

#[test]
fn a_new_meeting_round_trips() {
    let settings = MeetingSettings {
        title: None,
        template: Template::Balint,
        ephemeral: false,
        lobby: true,
        reconnect_grace_ms: 1,
        empty_grace_ms: 2,
        max_length_ms: 3,
        max_members: 4,
        sealed: true,
        link_generation: 5,
        sealed_title: None,
        controls: Default::default(),
    };
    let meeting = Meeting::new(settings, 1_700_000_000_000);
    let shared = decode(&encode(meeting.shared()).unwrap()).unwrap();
    assert_eq!(&shared, meeting.shared());
    assert!(shared.is_sealed());
    assert!(decode_settings(&encode_settings(&shared).unwrap()).unwrap().sealed);
}

#[test]
fn settings_written_before_formats_were_numbered_read_whole() {
    let settings = decode_settings(SETTINGS.as_bytes()).unwrap();
    assert_eq!(
        settings,
        RoomSettings {
            title: Some("Tuesday group".to_owned()),
            ephemeral: false,
            template: Template::Open,
            lobby: true,
            sealed: false,
            link_generation: 3,
            sealed_title: None,
            controls: Default::default(),
        }
    );
    let old = decode_settings(PRE_GENERATIONS_SETTINGS.as_bytes()).unwrap();
    assert_eq!(old.link_generation, 0);
    assert_eq!((old.template, old.lobby, old.ephemeral, old.sealed), (Template::Open, true, false, false));
}

#[test]
fn settings_are_the_meetings_and_round_trip() {
    let shared = decode(LIVE.as_bytes()).unwrap();
    let written = encode_settings(&shared).unwrap();
    assert_eq!(
        json(&written),
        serde_json::json!({
            "format": FORMAT,
            "title": "Tuesday group",
            "ephemeral": true,
            "template": "balint",
            "lobby": false,
            "sealed": false,
            "link_generation": 1,
            "speaking_limit_secs": shared.speaking_limit_secs,
            "fair_order": shared.fair_order,
            "phase_reset": shared.phase_reset,
            "board_locked": shared.board_locked,
        })
    );
    let read = decode_settings(&written).unwrap();
    assert_eq!(read.title.as_deref(), shared.title());
    assert_eq!((read.ephemeral, read.template, read.lobby), (true, Template::Balint, false));
    assert_eq!(read.link_generation, shared.link_generation());
    assert_eq!(read.controls, shared.controls());
}

#[test]
fn the_leaders_controls_and_a_sealed_title_are_kept_with_the_settings() {
    let mut shared = decode(LIVE.as_bytes()).unwrap();
    shared.speaking_limit_secs = Some(90);
    shared.fair_order = true;
    shared.phase_reset = false;
    shared.board_locked = true;
    shared.sealed = true;
    shared.title = None;
    shared.sealed_title = Some("c2VhbGVk".to_owned());
    let read = decode_settings(&encode_settings(&shared).unwrap()).unwrap();
    assert_eq!(
        read.controls,
        crate::room::Controls {
            speaking_limit_secs: Some(90),
            fair_order: true,
            phase_reset: false,
            board_locked: true
        }
    );
    assert_eq!(read.sealed_title.as_deref(), Some("c2VhbGVk"));
    // A meeting opened with them starts with them.
    let meeting = Meeting::new(
        MeetingSettings {
            title: None,
            sealed_title: read.sealed_title.clone(),
            controls: read.controls,
            template: read.template,
            ephemeral: false,
            lobby: read.lobby,
            reconnect_grace_ms: 1,
            empty_grace_ms: 2,
            max_length_ms: 3,
            max_members: 4,
            sealed: true,
            link_generation: 0,
        },
        1_700_000_000_000,
    );
    let state = meeting.state(true);
    assert_eq!(
        (state.speaking_limit_secs, state.fair_order, state.phase_reset, state.board_locked),
        (Some(90), true, false, true)
    );
    assert_eq!((state.sealed, state.sealed_title.as_deref(), state.title), (true, Some("c2VhbGVk"), None));
}

#[test]
fn an_unknown_format_is_named_never_guessed() {
    for format in [0, 2, 99] {
        let mut record = json(LIVE.as_bytes());
        record["format"] = format.into();
        assert_eq!(decode(&serde_json::to_vec(&record).unwrap()), Err(RecordError::UnknownFormat(format)));
        // A newer format whose layout differs is still told by its number.
        let other = serde_json::json!({"format": format, "something": "else"});
        assert_eq!(decode(&serde_json::to_vec(&other).unwrap()), Err(RecordError::UnknownFormat(format)));
        let settings = serde_json::json!({"format": format, "title": null});
        assert_eq!(decode_settings(&serde_json::to_vec(&settings).unwrap()), Err(RecordError::UnknownFormat(format)));
    }
}

#[test]
fn bad_input_is_an_error_that_quotes_nothing() {
    // A field of the wrong type: serde's own message would quote the value.
    let mut record = json(LIVE.as_bytes());
    record["members"]["AJLdkJC82DAq"]["arrival"] = "Lena's secret".into();
    let error = decode(&serde_json::to_vec(&record).unwrap()).unwrap_err();
    assert!(matches!(error, RecordError::Malformed { .. }), "{error:?}");
    assert!(!error.to_string().contains("secret"), "{error}");

    for garbage in [&b""[..], b"null", b"[]", b"{}", b"\xff\xfe", b"{\"format\":\"1\"}", b"{\"format\":-1}"] {
        assert!(matches!(decode(garbage), Err(RecordError::Malformed { .. })), "{garbage:?}");
        assert!(matches!(decode_settings(garbage), Err(RecordError::Malformed { .. })), "{garbage:?}");
    }
    // Every truncation of a real record is refused, none panics.
    for cut in 0..LIVE.len() {
        assert!(decode(&LIVE.as_bytes()[..cut]).is_err(), "cut at {cut}");
    }
    for cut in 0..SETTINGS.len() {
        assert!(decode_settings(&SETTINGS.as_bytes()[..cut]).is_err(), "cut at {cut}");
    }
}
