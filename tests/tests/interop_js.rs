//! Interop with the stock JavaScript clients: npm `yjs` with `y-websocket`'s
//! `WebsocketProvider`, both pinned versions (1.5.4 and the current 3.1.0), run by Node from
//! the scenario scripts in `tests/js/` against a real server.
//!
//! What a stock client can rely on, one scenario each, against both versions:
//! - it edits the notes with a Rust yrs client (`edit.mjs`);
//! - alone in its room, it keeps its first connection for two minutes (`lone.mjs`);
//! - a burst of 1,024 updates is slowed, not punished, and reaches a late joiner whole
//!   (`burst.mjs`);
//! - closed as too slow, it reconnects by itself and converges (`slow.mjs`).
//!
//! Needs `node` and `tests/js/node_modules`; `scripts/test.sh` installs both, and
//! [`require_node`] fails with that advice when they are missing.

use std::time::Duration;

use balint_e2e::stock::{require_node, Seen, StockClient, StockVersion};
use balint_e2e::{TestServer, YClient, DEADLINE};
use balint_proto::close;
use serde_json::{json, Value};

/// `ws://127.0.0.1:PORT/ws`: the provider appends `/ROOM?token=…&name=…`.
fn ws_base(server: &TestServer) -> String {
    format!("ws://{}/ws", server.addr)
}

/// The arguments that connect a script to `room` under `name`.
fn joining(server: &TestServer, room: &str, token: &str, name: &str) -> Vec<(&'static str, String)> {
    vec![("ws", ws_base(server)), ("room", room.to_owned()), ("token", token.to_owned()), ("name", name.to_owned())]
}

/// The notes of a script's report.
fn reported_notes(report: &Value) -> &str {
    report["notes"].as_str().unwrap_or_else(|| panic!("the report has no notes: {report}"))
}

/// Chunk `i` of `chars` characters: its number in four digits, a colon, then the letter
/// `a + i % 26`. The same as `chunk` in `tests/js/burst.mjs`.
fn chunk(i: usize, chars: usize) -> String {
    let head = format!("{i:04}:");
    let letter = char::from(b'a' + (i % 26) as u8);
    head.clone() + &letter.to_string().repeat(chars - head.len())
}

/// The Prometheus text of the server's metrics.
async fn metrics(server: &TestServer) -> String {
    reqwest::get(format!("{}/metrics", server.base())).await.expect("metrics").text().await.expect("metrics text")
}

/// The awareness client id whose state names `name`, if any.
fn awareness_of(client: &YClient, name: &str) -> Option<u64> {
    client.awareness.iter().find_map(|(id, state)| {
        let state: Value = serde_json::from_str(state).ok()?;
        (state["user"]["name"] == name).then_some(*id)
    })
}

// ---------------------------------------------------------------------------------------------
// A lone client keeps its connection.

/// How long the lone clients are held: four times y-websocket's 30 s "no message" limit.
const LONE_HOLD: Duration = Duration::from_secs(120);

/// A stock client alone in its room hears nothing from other peers. y-websocket closes a
/// connection on which it received nothing for 30 s and opens a new one; the server echoes the
/// client's own awareness (renewed every 15 s), so it never gets there. Both versions are held
/// at once, each alone in a room of its own, so that the two minutes are paid once.
#[tokio::test]
async fn a_lone_stock_client_keeps_one_connection_for_two_minutes() {
    require_node();
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for version in StockVersion::ALL {
        let room = server.create_room(json!({})).await;
        let mut args = joining(&server, &room.id, &room.invite_token, "Alone");
        args.push(("hold_ms", LONE_HOLD.as_millis().to_string()));
        clients.push((version, StockClient::spawn("lone.mjs", version, &args)));
    }
    for (_, client) in &mut clients {
        client.event("synced", DEADLINE).await.unwrap();
    }
    // Both were held at once; each report is read as it comes, and every failure is told.
    let mut problems = Vec::new();
    for (version, client) in clients {
        let label = version.label();
        let report = match client.report(LONE_HOLD + DEADLINE).await {
            Ok(report) => report,
            Err(e) => {
                problems.push(format!("{label}: {e}"));
                continue;
            }
        };
        let seen = Seen::from_report(&report);
        if (seen.sockets, seen.opens, seen.closes.as_slice()) != (1, 1, &[][..]) {
            problems.push(format!("{label}: did not keep its first connection for {LONE_HOLD:?}: {seen:?}"));
        }
        if seen.statuses != ["connecting", "connected"] {
            problems.push(format!("{label}: status changes {:?}", seen.statuses));
        }
        if (report["connected"].as_bool(), report["synced"].as_bool()) != (Some(true), Some(true)) {
            problems.push(format!("{label}: not connected and synced at the end: {report}"));
        }
        // Its own awareness came back at least once per renewal.
        let renewals = LONE_HOLD.as_secs() / 15;
        if seen.messages < renewals {
            problems.push(format!("{label}: only {} messages in {LONE_HOLD:?}", seen.messages));
        }
    }
    assert!(problems.is_empty(), "a lone stock client:\n{}", problems.join("\n"));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Editing with a Rust client.

const JS_NAME: &str = "NodeYjs";
const JS_TEXT: &str = "typed by yjs in node;";
const RUST_TEXT: &str = "typed by yrs in rust;";

/// A stock client and a Rust yrs client type into the same notes; each sees the other's text
/// and both end with the same notes.
async fn edit_notes_with_a_rust_client(version: StockVersion) {
    require_node();
    let label = version.label();
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut rust =
        YClient::connect(&server.ws_url(&room.id, &room.invite_token, "RustYrs")).await.expect("rust client connects");

    let mut args = joining(&server, &room.id, &room.invite_token, JS_NAME);
    args.extend([("text", JS_TEXT.to_owned()), ("expected", RUST_TEXT.to_owned())]);
    let stock = StockClient::spawn("edit.mjs", version, &args);
    // The script has its own 10 s deadline; leave it room to report before this one fires.
    let stock = tokio::spawn(stock.report(DEADLINE + Duration::from_secs(5)));

    // The JS client joined: its awareness state reaches the Rust client.
    rust.wait_until(|c| awareness_of(c, JS_NAME).is_some())
        .await
        .unwrap_or_else(|e| panic!("{label}: its awareness never arrived: {e}; states: {:?}", rust.awareness));
    let js_client_id = awareness_of(&rust, JS_NAME).expect("seen above");

    // Both type; each must see the other's text.
    rust.type_text(RUST_TEXT).await.expect("rust types");
    rust.wait_until(|c| c.notes().contains(JS_TEXT))
        .await
        .unwrap_or_else(|e| panic!("{label}: the Rust client never saw the JS text: {e}; notes: {:?}", rust.notes()));

    let report = stock.await.expect("stock client task").unwrap();
    let js_notes = reported_notes(&report);
    assert!(js_notes.contains(RUST_TEXT), "{label}: the JS client never saw the Rust text: {js_notes:?}");
    assert!(js_notes.contains(JS_TEXT), "{label}: the JS client lost its own text: {js_notes:?}");
    assert_eq!(rust.notes(), js_notes, "{label}: the clients disagree on the notes");
    let seen = Seen::from_report(&report);
    assert_eq!((seen.opens, seen.closes.as_slice()), (1, &[][..]), "{label}: one connection throughout: {seen:?}");

    // Once it left, its awareness state is gone.
    rust.wait_until(|c| !c.awareness.contains_key(&js_client_id))
        .await
        .unwrap_or_else(|e| panic!("{label}: its awareness was never removed: {e}; states: {:?}", rust.awareness));

    rust.close().await;
    server.stop().await;
}

#[tokio::test]
async fn edit_notes_with_a_rust_client_v1() {
    edit_notes_with_a_rust_client(StockVersion::V1).await;
}

#[tokio::test]
async fn edit_notes_with_a_rust_client_v3() {
    edit_notes_with_a_rust_client(StockVersion::V3).await;
}

// ---------------------------------------------------------------------------------------------
// A burst is slowed, not punished.

/// Updates in the burst.
const BURST_CHUNKS: usize = 1024;
/// Characters in each.
const BURST_CHUNK_CHARS: usize = 1024;
/// How long the burst may take to reach a late joiner. At the default rate (100 messages a
/// second, four seconds' worth at once) the server reads 1,024 messages in about 6.2 s.
const BURST_WAIT: Duration = Duration::from_secs(60);

/// A stock client writes 1 MiB as 1,024 updates in one synchronous loop. With the default
/// limits the server reads it more slowly than it is written, and must neither close the
/// writer nor lose any of it: a late joiner gets all 1,048,576 characters.
async fn a_burst_of_updates_reaches_a_late_joiner_whole(version: StockVersion) {
    require_node();
    let label = version.label();
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut args = joining(&server, &room.id, &room.invite_token, "Writer");
    args.extend([
        ("chunks", BURST_CHUNKS.to_string()),
        ("chunk_chars", BURST_CHUNK_CHARS.to_string()),
        ("deadline_ms", (2 * BURST_WAIT).as_millis().to_string()),
    ]);
    let mut writer = StockClient::spawn("burst.mjs", version, &args);
    writer.event("synced", DEADLINE).await.unwrap();
    let sent = writer.event("sent", BURST_WAIT).await.unwrap();
    let total = BURST_CHUNKS * BURST_CHUNK_CHARS;
    assert_eq!(sent["chars"].as_u64(), Some(total as u64), "{label}: the writer's own notes");

    // The late joiner, a Rust client, arrives after the whole burst left the writer.
    let mut late = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "Late")).await.unwrap();
    if let Err(e) = late.wait_until_within(BURST_WAIT, |c| c.notes_len() as usize >= total).await {
        panic!(
            "{label}: the late joiner has {} of {total} characters: {e}; writer stderr: {}",
            late.notes_len(),
            writer.stderr()
        );
    }
    let expected: String = (0..BURST_CHUNKS).map(|i| chunk(i, BURST_CHUNK_CHARS)).collect();
    assert!(late.notes() == expected, "{label}: the late joiner's notes differ from the burst");

    writer.command("leave").await.unwrap();
    let report = writer.report(DEADLINE).await.unwrap();
    assert!(reported_notes(&report) == expected, "{label}: the writer's notes differ from its burst");
    // The writer was never closed while the server caught up.
    let seen = Seen::from_report(&report);
    assert_eq!(
        (seen.sockets, seen.opens, seen.closes.as_slice()),
        (1, 1, &[][..]),
        "{label}: the writer must stay on its first connection through its burst: {seen:?}"
    );
    late.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_updates_reaches_a_late_joiner_whole_v1() {
    a_burst_of_updates_reaches_a_late_joiner_whole(StockVersion::V1).await;
}

#[tokio::test]
async fn a_burst_of_updates_reaches_a_late_joiner_whole_v3() {
    a_burst_of_updates_reaches_a_late_joiner_whole(StockVersion::V3).await;
}

// ---------------------------------------------------------------------------------------------
// A client closed as too slow reconnects by itself and converges.

/// Frames a connection may fall behind the room's feed in this test.
const SLOW_QUEUE: usize = 8;
/// Updates the writer sends while the stock client does not read.
const SLOW_CHUNKS: usize = 64;
/// Characters in each: 64 × 256 KiB = 16 MiB, several times what the loopback's socket buffers
/// hold (about 4 MiB here), so the server's writes to the paused client block and the room's
/// feed runs more than [`SLOW_QUEUE`] frames ahead of it.
const SLOW_CHUNK_CHARS: usize = 256 * 1024;

/// How long the stock client may take from the start to catching up after it reads again.
const SLOW_CATCH_UP: Duration = Duration::from_secs(60);

/// A stock client stops reading while another peer writes 16 MiB. The server closes it with
/// `TOO_SLOW` (4508, "reconnect later" in y-websocket 3's convention) once it reads again; it
/// must reconnect by itself and end with the writer's notes.
async fn a_client_closed_as_too_slow_reconnects_and_converges(version: StockVersion) {
    require_node();
    let label = version.label();
    let total = SLOW_CHUNKS * SLOW_CHUNK_CHARS;
    let server = TestServer::start_with(|config| {
        config.outbound_queue = SLOW_QUEUE;
        // The blocked write must outlast the pause, so that the client, reading again, gets
        // the close frame rather than a reset connection.
        config.write_timeout_ms = 20_000;
        // Room for the 16 MiB, and for the writer to send them at once: here only the reader is
        // slow.
        config.max_board_bytes = 4 * total;
        config.bytes_per_sec = u32::try_from(4 * total).expect("fits");
        config.messages_per_sec = 10_000;
    })
    .await;
    let room = server.create_room(json!({})).await;
    let mut writer = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "Writer")).await.unwrap();
    let mut observer = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "Observer")).await.unwrap();

    let mut args = joining(&server, &room.id, &room.invite_token, "Slow");
    args.extend([("expected_chars", total.to_string()), ("deadline_ms", SLOW_CATCH_UP.as_millis().to_string())]);
    let mut slow = StockClient::spawn("slow.mjs", version, &args);
    slow.event("synced", DEADLINE).await.unwrap();
    slow.command("pause").await.unwrap();
    slow.event("paused", DEADLINE).await.unwrap();

    // The writer writes; the observer, reading as it should, gets every update. When it has
    // the last one, the server has sent everything to the paused client's socket that fits.
    for i in 0..SLOW_CHUNKS {
        // At the start of the notes: appending 256 KiB chunks at the end takes time in
        // proportion to the notes in a debug build (0.1 s per chunk growing to 0.6 s, 24 s in
        // all), prepending a constant 0.05 s, and the client must not stay paused for 30 s
        // (its own "no message" limit).
        writer.insert_text(0, &chunk(i, SLOW_CHUNK_CHARS)).await.unwrap();
        let written = (i + 1) * SLOW_CHUNK_CHARS;
        observer.wait_until(|c| c.notes_len() as usize >= written).await.unwrap_or_else(|e| {
            panic!("{label}: the observer has {} of {written} characters: {e}", observer.notes_len())
        });
    }
    assert!(writer.closed.is_none() && observer.closed.is_none(), "only the paused client is slow");

    slow.command("resume").await.unwrap();
    slow.event("resumed", DEADLINE).await.unwrap();
    // The script's own deadline comes first, with its account of what it saw.
    let report = slow.report(SLOW_CATCH_UP + DEADLINE).await.unwrap();
    let seen = Seen::from_report(&report);
    assert_eq!(
        seen.closes.first(),
        Some(&Some(u64::from(close::TOO_SLOW))),
        "{label}: the paused client must be closed as too slow, and see it: {seen:?}"
    );
    assert!(seen.terminal.is_empty(), "{label}: it gave up reconnecting: {seen:?}");
    assert!(seen.opens >= 2, "{label}: it never reconnected: {seen:?}");
    assert!(
        reported_notes(&report) == writer.notes(),
        "{label}: the reconnected client's notes differ from the writer's"
    );
    assert!(
        metrics(&server).await.contains("balint_slow_client_closes_total 1\n"),
        "{label}: the server counts one connection closed as too slow"
    );
    writer.close().await;
    observer.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_closed_as_too_slow_reconnects_and_converges_v1() {
    a_client_closed_as_too_slow_reconnects_and_converges(StockVersion::V1).await;
}

#[tokio::test]
async fn a_client_closed_as_too_slow_reconnects_and_converges_v3() {
    a_client_closed_as_too_slow_reconnects_and_converges(StockVersion::V3).await;
}
