//! `docs/PROTOCOL.md` cannot go stale: every example marked ```` ```json client ```` must be a
//! `ClientMessage` and every one marked ```` ```json server ```` a `ServerMessage`, each written
//! exactly as serde writes it; every message type has an example; and every error code, role,
//! phase, status, template and close code is mentioned.
//!
//! The lists of names come from serde itself (the "expected one of" of an unknown variant), so
//! a variant added to `proto/src/room.rs` fails this test until the document covers it.

use balint_proto::room::{ClientMessage, ErrorCode, Phase, Role, ServerMessage, Status, Template};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

const DOC: &str = include_str!("../../docs/PROTOCOL.md");
const CLOSE_RS: &str = include_str!("../../proto/src/close.rs");
const README: &str = include_str!("../../README.md");
const ROOM_JS: &str = include_str!("../../web/assets/room.js");

/// A fenced example of the document.
struct Example {
    /// `client` or `server`.
    side: String,
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
}

/// Every fenced block whose info string is `json client` or `json server`.
fn examples(doc: &str) -> Vec<Example> {
    let mut found = Vec::new();
    let mut open: Option<Example> = None;
    for (i, line) in doc.lines().enumerate() {
        let trimmed = line.trim();
        match &mut open {
            Some(example) => {
                if trimmed == "```" {
                    found.push(open.take().expect("open"));
                } else {
                    example.text.push_str(line);
                    example.text.push('\n');
                }
            }
            None => {
                let Some(info) = trimmed.strip_prefix("```") else { continue };
                let words: Vec<&str> = info.split_whitespace().collect();
                if let ["json", side @ ("client" | "server")] = words.as_slice() {
                    open = Some(Example { side: (*side).to_owned(), line: i + 1, text: String::new() });
                }
            }
        }
    }
    assert!(open.is_none(), "an example block is never closed");
    found
}

/// Parses an example as `T` and checks that serde writes it back exactly as it stands.
fn parse_exactly<T: DeserializeOwned + Serialize>(example: &Example) -> T {
    let what = format!("the `json {}` example at docs/PROTOCOL.md:{}", example.side, example.line);
    let written: Value = serde_json::from_str(&example.text).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"));
    let parsed: T = serde_json::from_str(&example.text).unwrap_or_else(|e| panic!("{what} does not parse: {e}"));
    let rewritten = serde_json::to_value(&parsed).expect("serializes");
    assert_eq!(rewritten, written, "{what} is not what serde produces");
    parsed
}

/// The wire names of every variant of `T`, from serde's refusal of an unknown one. `probe` is
/// an unknown variant in `T`'s form.
fn variant_names<T: DeserializeOwned + std::fmt::Debug>(probe: &str) -> Vec<String> {
    let error = serde_json::from_str::<T>(probe).expect_err("the probe is not a variant").to_string();
    let expected = error.split_once("expected").map_or("", |(_, rest)| rest);
    let names: Vec<String> = expected.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(!names.is_empty(), "could not read the variants from {error:?}");
    names
}

fn type_of(value: &Value) -> &str {
    value["type"].as_str().expect("tagged by type")
}

#[test]
fn every_example_is_a_message_as_serde_writes_it() {
    let examples = examples(DOC);
    let (mut clients, mut servers) = (0, 0);
    for example in &examples {
        match example.side.as_str() {
            "client" => {
                let _: ClientMessage = parse_exactly(example);
                clients += 1;
            }
            _ => {
                let _: ServerMessage = parse_exactly(example);
                servers += 1;
            }
        }
    }
    assert!(clients > 0 && servers > 0, "found {clients} client and {servers} server examples");
}

#[test]
fn every_message_type_has_an_example() {
    let examples = examples(DOC);
    let types = |side: &str| -> Vec<String> {
        examples
            .iter()
            .filter(|e| e.side == side)
            .map(|e| type_of(&serde_json::from_str(&e.text).expect("JSON")).to_owned())
            .collect()
    };
    let (client_types, server_types) = (types("client"), types("server"));
    let probe = r#"{"type":"no such message"}"#;
    for name in variant_names::<ClientMessage>(probe) {
        assert!(client_types.contains(&name), "no `json client` example of `{name}` in docs/PROTOCOL.md");
    }
    for name in variant_names::<ServerMessage>(probe) {
        assert!(server_types.contains(&name), "no `json server` example of `{name}` in docs/PROTOCOL.md");
    }
}

#[test]
fn a_full_room_state_is_shown() {
    let full = examples(DOC).into_iter().filter(|e| e.side == "server").find_map(|e| {
        match parse_exactly::<ServerMessage>(&e) {
            ServerMessage::Welcome { state, .. } | ServerMessage::State { state } => {
                let complete = state.waiting.as_ref().is_some_and(|w| !w.is_empty())
                    && state.participation.as_ref().is_some_and(|p| !p.is_empty())
                    && !state.members.is_empty()
                    && !state.queue.is_empty()
                    && state.floor.as_ref().is_some_and(|f| f.limit_secs.is_some())
                    && state.presenter.is_some()
                    && state.title.is_some();
                complete.then_some(state)
            }
            _ => None,
        }
    });
    assert!(full.is_some(), "one example shows a room state with every field filled in");
}

#[test]
fn every_code_and_name_is_documented() {
    let probe = r#""no such name""#;
    let groups = [
        ("error code", variant_names::<ErrorCode>(probe)),
        ("role", variant_names::<Role>(probe)),
        ("phase", variant_names::<Phase>(probe)),
        ("status", variant_names::<Status>(probe)),
        ("template", variant_names::<Template>(probe)),
    ];
    for (kind, names) in groups {
        for name in names {
            assert!(DOC.contains(&format!("`{name}`")), "the {kind} `{name}` is not in docs/PROTOCOL.md");
        }
    }
    // Error codes each have a row in the table.
    for name in variant_names::<ErrorCode>(probe) {
        assert!(DOC.contains(&format!("| `{name}` |")), "the error code `{name}` has no row in the table");
    }
}

/// The rows of a close-code table in a document: the lines between `start` (a line of the
/// header) and the first line after it that is not a table row, without the header lines.
fn table_rows<'a>(doc: &'a str, header: &str) -> Vec<&'a str> {
    let mut lines = doc.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "no table with the header `{header}`");
    lines.skip(1).take_while(|l| l.starts_with('|')).collect()
}

#[test]
fn the_close_code_tables_are_the_protocols_own() {
    use balint_proto::close::{reconnect_after, CLOSE_CODES};
    let protocol: Vec<String> = CLOSE_CODES
        .iter()
        .map(|c| format!("| `{}` | `{}` | {} | {} |", c.code, c.name, c.meaning, reconnect_after(c.code).as_str()))
        .collect();
    let readme: Vec<String> = CLOSE_CODES
        .iter()
        .map(|c| format!("| {} | {} | {} |", c.code, c.meaning, reconnect_after(c.code).as_str()))
        .collect();
    let shown = table_rows(DOC, "| code | name in `close.rs` | meaning | reconnect? |");
    assert_eq!(shown, protocol, "docs/PROTOCOL.md's close codes, expected:\n{}", protocol.join("\n"));
    let shown = table_rows(README, "| code | meaning | reconnect? |");
    assert_eq!(shown, readme, "README.md's close codes, expected:\n{}", readme.join("\n"));
}

#[test]
fn every_close_code_constant_is_in_the_table() {
    let mut found = 0;
    for line in CLOSE_RS.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else { continue };
        let Some((name, value)) = rest.split_once(": u16 = ") else { continue };
        let value: u16 = value.trim_end_matches(';').parse().expect("a number");
        let listed = balint_proto::close::CLOSE_CODES.iter().any(|c| c.code == value && c.name == name);
        assert!(listed, "close code {name} = {value} is not in close::CLOSE_CODES");
        found += 1;
    }
    assert!(found >= 14, "read {found} close codes from proto/src/close.rs");
}

#[test]
fn every_refusal_reason_is_documented_and_has_a_sentence_in_the_ui() {
    use balint_proto::rules::Reason;
    let names = variant_names::<Reason>(r#""no such reason""#);
    let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names, all, "rules::Reason::ALL lists every reason, in declaration order");
    let rows: Vec<String> = Reason::ALL.iter().map(|r| format!("| `{}` | {} |", r.as_str(), r.message())).collect();
    let shown = table_rows(DOC, "| reason | `message` |");
    assert_eq!(shown, rows, "docs/PROTOCOL.md's refusal reasons, expected:\n{}", rows.join("\n"));
    // The web UI's catalogue: one sentence per reason, in its REFUSALS table.
    let catalogue = ROOM_JS.split_once("const REFUSALS = {").expect("room.js has REFUSALS").1;
    let catalogue = catalogue.split_once("\n};").expect("REFUSALS ends").0;
    for name in all {
        assert!(catalogue.contains(&format!("\n  {name}:")), "room.js has no sentence for the reason `{name}`");
    }
}
