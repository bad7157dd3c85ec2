//! Interop with a stock JavaScript client: npm `yjs` with `y-websocket`'s `WebsocketProvider`,
//! run by Node (`tests/js/interop.mjs`), edits the same notes as a Rust yrs client.
//!
//! Needs `node` on the PATH and `tests/js/node_modules`; `scripts/test.sh` installs both. When
//! either is missing this test fails with that advice rather than skipping.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use balint_e2e::{TestServer, YClient, DEADLINE};
use serde_json::{json, Value};

const JS_NAME: &str = "NodeYjs";
const JS_TEXT: &str = "typed by yjs in node;";
const RUST_TEXT: &str = "typed by yrs in rust;";

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Fails the test, with the fix, when Node or the npm packages are missing.
fn require_node() {
    let advice = "run `scripts/test.sh`, which installs Node's packages for tests/js";
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`node --version` failed ({}): {advice}", out.status),
        Err(e) => panic!("`node` cannot be run ({e}): Node.js is needed for this test; {advice}"),
    }
    for package in ["yjs", "y-websocket", "ws"] {
        let dir = js_dir().join("node_modules").join(package);
        assert!(dir.is_dir(), "{} is missing: {advice}", dir.display());
    }
}

/// The awareness client id whose state names `name`, if any.
fn awareness_of(client: &YClient, name: &str) -> Option<u64> {
    client.awareness.iter().find_map(|(id, state)| {
        let state: Value = serde_json::from_str(state).ok()?;
        (state["user"]["name"] == name).then_some(*id)
    })
}

#[tokio::test]
async fn stock_yjs_client_edits_notes_with_a_rust_client() {
    require_node();
    let server = TestServer::start().await;
    let room = server.create_room(json!({})).await;
    let mut rust =
        YClient::connect(&server.ws_url(&room.id, &room.invite_token, "RustYrs")).await.expect("rust client connects");

    let ws_base = format!("ws://{}/ws", server.addr);
    let node = tokio::process::Command::new("node")
        .arg(js_dir().join("interop.mjs"))
        .args([ws_base.as_str(), &room.id, &room.invite_token, JS_NAME, JS_TEXT, RUST_TEXT])
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    // The script has its own 10 s deadline; leave it room to report before this one fires.
    let node = tokio::spawn(tokio::time::timeout(DEADLINE + Duration::from_secs(5), node.wait_with_output()));

    // The JS client joined: its awareness state reaches the Rust client.
    rust.wait_until(|c| awareness_of(c, JS_NAME).is_some())
        .await
        .unwrap_or_else(|e| panic!("JS awareness never arrived: {e}; states: {:?}", rust.awareness));
    let js_client_id = awareness_of(&rust, JS_NAME).expect("seen above");

    // Both type; each must see the other's text.
    rust.type_text(RUST_TEXT).await.expect("rust types");
    rust.wait_until(|c| c.notes().contains(JS_TEXT))
        .await
        .unwrap_or_else(|e| panic!("the Rust client never saw the JS text: {e}; notes: {:?}", rust.notes()));

    let output = node.await.expect("node task").expect("node did not exit before the deadline").expect("node output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "node failed ({}):\nstdout: {stdout}\nstderr: {stderr}", output.status);
    let line = stdout.lines().last().unwrap_or_else(|| panic!("node printed nothing; stderr: {stderr}"));
    let report: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
    let js_notes = report["notes"].as_str().expect("notes string");
    assert!(js_notes.contains(RUST_TEXT), "the JS client never saw the Rust text: {js_notes:?}");
    assert!(js_notes.contains(JS_TEXT), "the JS client lost its own text: {js_notes:?}");
    // Both documents converged on the same notes.
    assert_eq!(rust.notes(), js_notes, "the clients disagree on the notes");

    // Node left without announcing it; the server removes its awareness on disconnect.
    rust.wait_until(|c| !c.awareness.contains_key(&js_client_id))
        .await
        .unwrap_or_else(|e| panic!("the JS awareness was never removed: {e}; states: {:?}", rust.awareness));

    rust.close().await;
    server.stop().await;
}
