//! The web UI in a real browser: headless Chromium, driven by `playwright-core` from Node
//! (`tests/browser/session.mjs`), runs a whole session against a real server: a leader and two
//! members in three browser contexts create a room on `/`, join through the links, write in the
//! notes, raise hands (also by the keyboard), take the floor, go through reflection, and end the
//! meeting for all. On the way the room is looked at on a laptop, beside a call and on a phone
//! (the essentials in view without scrolling), two writers see each other's carets, the queue
//! explains fair order, a phase change lowers the hands, two newcomers come in with one click,
//! the leader downloads the attendance sheet, and axe-core checks every screen, light and dark.
//! Then, on a server that keeps a place for 2 s, a member offline past it comes back by herself
//! and is told what the room let go of (`tests/browser/released.mjs`).
//!
//! Needs `node`, `tests/browser/node_modules` (`npm ci`), Debian's `chromium` and the built wasm
//! client in `web/assets/pkg`. `scripts/test.sh` provides all four. When one is missing this
//! test fails with that advice rather than skipping. Screenshots of every step go to
//! `target/browser-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use balint_e2e::TestServer;

/// The whole session may take this long; each of its steps has its own 10 s deadline.
const SESSION_DEADLINE: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn chromium() -> PathBuf {
    std::env::var_os("BALINT_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails the test, with the fix, when something the browser test needs is missing.
fn require_browser_setup(root: &Path) {
    let advice = "run `scripts/test.sh`, which builds the wasm client and installs Chromium and the npm packages";
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`node --version` failed ({}): {advice}", out.status),
        Err(e) => panic!("`node` cannot be run ({e}): Node.js drives the browser test; {advice}"),
    }
    for package in ["playwright-core", "axe-core"] {
        let installed = root.join("tests/browser/node_modules").join(package);
        assert!(installed.is_dir(), "{} is missing: {advice}", installed.display());
    }
    let chromium = chromium();
    assert!(chromium.is_file(), "Chromium is missing at {} (or set BALINT_CHROMIUM): {advice}", chromium.display());
    for file in ["balint_client.js", "balint_client_bg.wasm"] {
        let built = root.join("web/assets/pkg").join(file);
        assert!(
            built.is_file(),
            "the wasm client is not built ({} is missing): {advice}, or `client-wasm/build-web.sh`",
            built.display()
        );
    }
}

/// Runs `script` (in `tests/browser`) with `args` after the server's base URL, and fails the test
/// with its output unless it reports success within `deadline`.
async fn run_script(script: &str, server: &TestServer, args: &[&str], deadline: Duration) {
    let root = repo_root();
    require_browser_setup(&root);
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let screenshots = target.join("browser-screenshots");
    let node = tokio::process::Command::new("node")
        .arg(script)
        .arg(server.base())
        .args(args)
        .arg(&screenshots)
        .current_dir(root.join("tests/browser"))
        .env("BALINT_CHROMIUM", chromium())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let output = tokio::time::timeout(deadline, node.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {deadline:?}"))
        .expect("node output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}); screenshots in {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status,
        screenshots.display()
    );
    assert!(stdout.contains(r#""ok":true"#), "unexpected report: {stdout}\nstderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_three_browsers() {
    let web = repo_root().join("web");
    let server = TestServer::start_with(|config| config.web_dir = web).await;
    run_script("session.mjs", &server, &[], SESSION_DEADLINE).await;
    server.stop().await;
}

/// A member offline longer than the room keeps a place comes back by herself, and her page says
/// how long the place was kept and that her raised hand was lowered (`tests/browser/released.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_after_the_grace_is_told_what_the_room_let_go_of() {
    const GRACE_SECS: u64 = 2;
    let web = repo_root().join("web");
    let server = TestServer::start_with(|config| {
        config.web_dir = web;
        config.reconnect_grace_secs = GRACE_SECS;
    })
    .await;
    run_script("released.mjs", &server, &[&GRACE_SECS.to_string()], Duration::from_secs(60)).await;
    server.stop().await;
}
