//! Stock JavaScript clients: npm `yjs` with `y-websocket`'s `WebsocketProvider`, run by Node
//! from the scenario scripts in `tests/js/`, for the interop tests.
//!
//! A script reports on stdout, one JSON object per line, each with an `event` field, and takes
//! commands on stdin, one word per line (`tests/js/stock.mjs` describes the conversation).
//! Needs `node` on the PATH and `tests/js/node_modules`; `scripts/test.sh` installs both. When
//! either is missing, [`require_node`] fails the test with that advice rather than skipping.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// A pinned version of the stock client (`tests/js/package.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockVersion {
    /// `y-websocket` 1.5.4 (2022): reconnects after any close.
    V1,
    /// `y-websocket` 3.1.0, the current one: does not reconnect after a close code in
    /// 4400–4499.
    V3,
}

impl StockVersion {
    /// Both pinned versions.
    pub const ALL: [StockVersion; 2] = [StockVersion::V1, StockVersion::V3];

    /// The `version=` argument of the scripts.
    fn arg(self) -> &'static str {
        match self {
            StockVersion::V1 => "1",
            StockVersion::V3 => "3",
        }
    }

    /// The package and version, for messages.
    pub fn label(self) -> &'static str {
        match self {
            StockVersion::V1 => "y-websocket 1.5.4",
            StockVersion::V3 => "y-websocket 3.1.0",
        }
    }
}

/// The directory of the scripts and their packages.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Fails the test, with the fix, when Node or the npm packages are missing.
pub fn require_node() {
    let advice = "run `scripts/test.sh`, which installs Node's packages for tests/js";
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`node --version` failed ({}): {advice}", out.status),
        Err(e) => panic!("`node` cannot be run ({e}): Node.js is needed for this test; {advice}"),
    }
    for package in ["yjs", "y-websocket", "y-websocket-v3", "ws"] {
        let dir = js_dir().join("node_modules").join(package);
        assert!(dir.is_dir(), "{} is missing: {advice}", dir.display());
    }
}

/// One stock client, run by Node from a scenario script.
pub struct StockClient {
    label: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
}

impl StockClient {
    /// Starts `tests/js/{script}` for `version`, with `args` as its `key=value` arguments
    /// (`version` is added).
    pub fn spawn(script: &str, version: StockVersion, args: &[(&str, String)]) -> Self {
        let mut command = tokio::process::Command::new("node");
        command.arg(js_dir().join(script)).arg(format!("version={}", version.arg()));
        for (key, value) in args {
            command.arg(format!("{key}={value}"));
        }
        let mut child = command
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {script}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        // Stderr is collected as it comes, so that a failure can quote it.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer).await {
                sink.lock().expect("stderr lock").push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        StockClient { label: format!("{script} with {}", version.label()), child, stdin, stdout, stderr }
    }

    /// What the script wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Reads the script's lines until the event `name`, and returns it. Fails when `within`
    /// passes first, or when the script ends first (quoting its stderr).
    pub async fn event(&mut self, name: &str, within: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
                Err(_) => bail!("{}: no `{name}` within {within:?}; stderr: {}", self.label, self.stderr()),
                Ok(line) => line.with_context(|| format!("{}: reading stdout", self.label))?,
            };
            let Some(line) = line else {
                // The script ended: give its stderr a moment to be collected, then quote it.
                let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                bail!("{}: ended ({status:?}) before `{name}`; stderr: {}", self.label, self.stderr());
            };
            let event: Value = serde_json::from_str(&line)
                .map_err(|e| anyhow!("{}: not a JSON line ({e}): {line:.200}", self.label))?;
            if event["event"] == name {
                return Ok(event);
            }
        }
    }

    /// Sends the command `word` on the script's stdin.
    pub async fn command(&mut self, word: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{word}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Reads the script's `report`, then waits for it to exit successfully.
    pub async fn report(mut self, within: Duration) -> anyhow::Result<Value> {
        let report = self.event("report", within).await?;
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .map_err(|_| anyhow!("{}: did not exit after its report", self.label))??;
        if !status.success() {
            bail!("{}: exited with {status} after its report; stderr: {}", self.label, self.stderr());
        }
        Ok(report)
    }
}

/// What a report says happened to the stock client's connections, for assertion messages and
/// checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// WebSockets the provider created.
    pub sockets: u64,
    /// WebSockets that opened.
    pub opens: u64,
    /// Messages received over all of them.
    pub messages: u64,
    /// The provider's `status` events, in order.
    pub statuses: Vec<String>,
    /// Close codes the server sent, in order; `None` for a close the client made itself.
    pub closes: Vec<Option<u64>>,
    /// Close codes after which y-websocket 3 gave up reconnecting.
    pub terminal: Vec<u64>,
}

impl Seen {
    /// Reads the shared fields of a `report`.
    pub fn from_report(report: &Value) -> Self {
        let count = |key: &str| report[key].as_u64().unwrap_or_else(|| panic!("report has no {key}: {report}"));
        let list = |key: &str| report[key].as_array().cloned().unwrap_or_else(|| panic!("report has no {key}"));
        Seen {
            sockets: count("sockets"),
            opens: count("opens"),
            messages: count("messages"),
            statuses: list("statuses").iter().map(|s| s.as_str().unwrap_or("?").to_owned()).collect(),
            closes: list("closes").iter().map(|c| c["code"].as_u64()).collect(),
            terminal: list("terminal").iter().filter_map(|c| c["code"].as_u64()).collect(),
        }
    }
}
