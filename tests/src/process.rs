//! Real processes for cluster tests: `balint-room` nodes and a `redis-server` of their own.
//!
//! Nodes are the real binary, so a test can kill one with SIGKILL. Each test starts its own
//! Redis on a free port when it needs to restart it.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// The `balint-room` binary, built once per test run.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "balint-server", "--bin", "balint-room"])
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err("building balint-room failed".to_owned());
            }
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
            Ok(target.join("debug").join("balint-room"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The server program a test starts: `default`, unless `variable` names another (as
/// `scripts/test.sh` does to run the same tests on `valkey-server` and `valkey-sentinel`).
fn redis_program(variable: &str, default: &str) -> String {
    std::env::var(variable).ok().filter(|program| !program.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// A `redis-server` owned by the test, on its own port, keeping nothing on disk.
pub struct RedisProcess {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    /// Further arguments of `redis-server` (a replica's `--replicaof`, a password).
    extra: Vec<String>,
    /// Its working directory: a replica writes the primary's data there when it syncs.
    dir: tempfile::TempDir,
}

impl RedisProcess {
    /// Starts a Redis on a free port and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a Redis on a free port with further `redis-server` arguments, and waits until it
    /// answers.
    pub fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let extra = extra.iter().map(|arg| (*arg).to_owned()).collect();
        let mut redis = RedisProcess { port: free_port(), child: None, extra, dir: tempfile::tempdir()? };
        redis.restart()?;
        Ok(redis)
    }

    /// Starts a Redis that speaks only TLS on its port, with the certificate and key in PEM
    /// files `cert` and `key`, and that asks every client for a certificate signed by `ca`.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<Self> {
        let port = free_port();
        let (port_arg, cert, key, ca) =
            (port.to_string(), cert.display().to_string(), key.display().to_string(), ca.display().to_string());
        let extra = [
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "yes",
        ];
        let extra = extra.iter().map(|arg| (*arg).to_owned()).collect();
        let mut redis = RedisProcess { port, child: None, extra, dir: tempfile::tempdir()? };
        redis.restart()?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (its data goes with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let child = Command::new(redis_program("BALINT_TEST_REDIS_SERVER", "redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server is needed for this test (scripts/test.sh installs it)")?;
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("redis-server did not start")
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `redis-cli` against the server on `port` (with `password`, if any) and returns what
/// it printed, trimmed.
pub fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        // Through the environment, so that redis-cli prints no warning about it.
        command.env("REDISCLI_AUTH", password);
    }
    let out = command.args(args).stdin(Stdio::null()).output().context("redis-cli is needed for this test")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A `redis-sentinel` owned by the test: its own port, and its own configuration file in a
/// temporary directory (Sentinel rewrites it).
pub struct SentinelProcess {
    /// Its port.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SentinelProcess {
    /// Starts a Sentinel on a free port that monitors the primary on `primary` under
    /// `master` (quorum 2), with short timeouts: the primary is taken for down after 1 s
    /// without an answer. `auth` is the primary's password, if it has one.
    pub fn start(master: &str, primary: u16, auth: Option<&str>) -> anyhow::Result<Self> {
        Self::start_conf(master, primary, auth, 2, "")
    }

    /// Starts a Sentinel, alone in its quorum, that speaks only TLS on its port and to the
    /// servers (with the certificate and key in PEM files `cert` and `key`, trusting `ca`).
    pub fn start_tls(master: &str, primary: u16, cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<Self> {
        let tls = format!(
            "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-replication yes\ntls-auth-clients yes\n",
            cert.display(),
            key.display(),
            ca.display()
        );
        Self::start_conf(master, primary, None, 1, &tls)
    }

    fn start_conf(master: &str, primary: u16, auth: Option<&str>, quorum: u8, tls: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = tempfile::tempdir()?;
        let ports = if tls.is_empty() { format!("port {port}\n") } else { format!("port 0\ntls-port {port}\n{tls}") };
        let mut conf = format!(
            "{ports}bind 127.0.0.1\ndaemonize no\ndir {}\n\
             sentinel monitor {master} 127.0.0.1 {primary} {quorum}\n\
             sentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 5000\n\
             sentinel parallel-syncs {master} 1\n",
            dir.path().display()
        );
        if let Some(auth) = auth {
            conf.push_str(&format!("sentinel auth-pass {master} {auth}\n"));
        }
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new(redis_program("BALINT_TEST_REDIS_SENTINEL", "redis-sentinel"))
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-sentinel is needed for this test (scripts/test.sh installs it)")?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(SentinelProcess { port, child, _dir: dir });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("redis-sentinel did not start")
    }

    /// What this Sentinel says of `master` (`SENTINEL MASTER`), field by field.
    pub fn master_info(&self, master: &str) -> std::collections::HashMap<String, String> {
        let out = redis_cli(self.port, None, &["SENTINEL", "MASTER", master]).unwrap_or_default();
        let lines: Vec<&str> = out.lines().collect();
        lines.chunks(2).filter(|pair| pair.len() == 2).map(|pair| (pair[0].to_owned(), pair[1].to_owned())).collect()
    }

    /// The port of the server this Sentinel takes for the primary of `master`.
    pub fn primary_port(&self, master: &str) -> Option<u16> {
        let out = redis_cli(self.port, None, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", master]).ok()?;
        out.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `balint-room` node running as its own process.
pub struct NodeProcess {
    /// The address it listens on.
    pub addr: SocketAddr,
    child: Child,
    /// Every log line the node wrote, for tests that look for leaks.
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Starts a node with `args` (flags of `balint-room`) on a free port and waits until it
    /// listens.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let binary = server_binary()?;
        let port = free_port();
        let mut child = Command::new(binary)
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("RUST_LOG", std::env::var("BALINT_TEST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        let stdout = child.stdout.take().expect("piped");
        let mut banner = String::new();
        BufReader::new(stdout).read_line(&mut banner)?;
        if !banner.contains("running on") {
            let _ = child.kill();
            bail!("node did not start: {:?}", logs.lock().expect("log lock"));
        }
        Ok(NodeProcess { addr: format!("127.0.0.1:{port}").parse()?, child, logs })
    }

    /// `http://ADDR`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The WebSocket URL of a room.
    pub fn ws_url(&self, room: &str, token: &str, name: &str) -> String {
        format!("ws://{}/ws/{room}?token={token}&name={name}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the node dies at once, with no chance to tidy up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(self.child.wait()?)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl crate::YClient {
    /// Joins as a room-protocol client resuming `resume`, with a document that may hold edits
    /// made while disconnected.
    pub async fn join_resuming_with_doc(url: &str, resume: Option<&str>, doc: yrs::Doc) -> anyhow::Result<Self> {
        let mut client = Self::open(url, doc).await?;
        client.hello(resume).await?;
        client.wait_until(|c| c.member_id().is_some()).await?;
        client.send_step1().await?;
        if client.is_admitted() {
            client.wait_until(|c| c.synced).await?;
        }
        Ok(client)
    }
}

impl crate::YClient {
    /// Adds an observation card `{id, author, phase, body, created_ms}` to the board and sends
    /// the update.
    pub async fn add_card(&mut self, author: &str, phase: &str, body: &str) -> anyhow::Result<()> {
        use yrs::{ReadTxn, Transact};
        let before = self.doc.transact().state_vector();
        push_card(&self.doc, author, phase, body);
        let update = self.doc.transact().encode_state_as_update_v1(&before);
        self.send_binary(balint_proto::sync::encode_update(&update).to_vec()).await
    }

    /// How many observation cards this client's board holds.
    pub fn card_count(&self) -> u32 {
        use yrs::{Array, Transact};
        self.doc.get_or_insert_array("observations").len(&self.doc.transact())
    }
}

/// Whether the memory of process `pid` contains `needle`, read through `/proc/PID/maps` and
/// `/proc/PID/mem`. Regions that cannot be read (guard pages, device mappings) are skipped.
pub fn memory_contains(pid: u32, needle: &[u8]) -> anyhow::Result<bool> {
    Ok(!memory_matches(pid, needle)?.is_empty())
}

/// Where `needle` is in the memory of process `pid`: the mapping line and a few bytes around
/// each match, to say where content hides when a leak test fails.
pub fn memory_matches(pid: u32, needle: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let finder = memchr::memmem::Finder::new(needle);
    let mut buffer = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (start, end) = (u64::from_str_radix(start, 16)?, u64::from_str_radix(end, 16)?);
        // Read in chunks that overlap by the needle's length.
        let chunk = 8 << 20;
        let mut at = start;
        while at < end {
            let len = ((end - at) as usize).min(chunk + needle.len());
            buffer.resize(len, 0);
            if mem.seek(SeekFrom::Start(at)).is_err() {
                break;
            }
            let Ok(read) = mem.read(&mut buffer) else { break };
            for index in finder.find_iter(&buffer[..read]) {
                let from = index.saturating_sub(48);
                let to = (index + needle.len() + 48).min(read);
                found.push(format!(
                    "{line} @{:#x}: {:?}",
                    at + index as u64,
                    String::from_utf8_lossy(&buffer[from..to])
                ));
            }
            if read == 0 {
                break;
            }
            at += chunk as u64;
        }
    }
    Ok(found)
}

/// The directory of PostgreSQL's server programs (`initdb`, `pg_ctl`): on `PATH`, or where
/// Debian's `postgresql` package puts them.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is needed for this test (scripts/test.sh installs it)")?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| anyhow!("no pg_ctl under /usr/lib/postgresql"))
}

/// Whether this process runs as root (PostgreSQL then refuses to run as us).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// A PostgreSQL cluster owned by the test: a throw-away data directory, its own port, trust
/// authentication on loopback only. As root it runs as the `postgres` user.
pub struct PostgresProcess {
    /// Its port.
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    running: bool,
}

impl PostgresProcess {
    /// Creates a cluster on a free port and starts it.
    pub fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let dir = tempfile::tempdir()?;
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status()?;
            anyhow::ensure!(status.success(), "cannot hand the data directory to the postgres user");
        }
        let mut postgres = PostgresProcess { port: free_port(), bin, dir, running: false };
        let data = postgres.data_dir();
        postgres.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])?;
        postgres.restart()?;
        Ok(postgres)
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    /// Runs one of PostgreSQL's programs, as the `postgres` user when we are root.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let out = command.args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("{} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `postgresql://postgres@127.0.0.1:PORT/postgres`, as the superuser.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (connections are cut; the data stays).
    pub fn stop(&mut self) {
        if self.running {
            let data = self.data_dir();
            let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }

    /// Starts the server (again) on the same port, with the same data, and waits until it
    /// accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let data = self.data_dir();
        let log = self.dir.path().join("server.log").to_string_lossy().into_owned();
        let socket_dir = self.dir.path().to_string_lossy().into_owned();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {socket_dir} -c fsync=off -c full_page_writes=off",
            self.port
        );
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "30", "start"])?;
        self.running = true;
        Ok(())
    }
}

impl Drop for PostgresProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shared PostgreSQL the tests use: `BALINT_TEST_POSTGRES_URL`, by default the one on
/// the development machine (`scripts/test.sh` starts one when none answers).
pub fn test_postgres_url() -> String {
    std::env::var("BALINT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh schema on the shared PostgreSQL, and a URL whose connections use it, so that tests
/// run in parallel without seeing each other's tables.
pub async fn fresh_postgres_schema() -> anyhow::Result<String> {
    use rand::distributions::{Alphanumeric, DistString};
    let admin = test_postgres_url();
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .context("PostgreSQL is needed for this test (scripts/test.sh starts one)")?;
    tokio::spawn(connection);
    let schema = format!("e2e{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 12).to_ascii_lowercase());
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
    let separator = if admin.contains('?') { '&' } else { '?' };
    Ok(format!("{admin}{separator}options=-c%20search_path%3D{schema}"))
}

/// The stored board of `room` in the board store at `url` (with its `search_path`), if any.
pub async fn postgres_board(url: &str, room: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let row = client.query_opt("SELECT board FROM balint_boards WHERE room = $1", &[&room]).await?;
    Ok(row.map(|row| row.get(0)))
}

/// Creates a room on `node` (persistent unless `ephemeral`): its id, leader and invite tokens.
pub async fn create_room(node: &NodeProcess, ephemeral: bool) -> (String, String, String) {
    let response = reqwest::Client::new()
        .post(format!("{}/api/rooms", node.base()))
        .json(&serde_json::json!({"title": "Thursday log", "ephemeral": ephemeral}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let room: serde_json::Value = response.json().await.unwrap();
    let field = |name: &str| room[name].as_str().unwrap().to_owned();
    (field("room"), field("leader_token"), field("invite_token"))
}

/// Waits until the PostgreSQL board store at `url` holds `needle` in the room's board.
pub async fn stored_in_postgres(url: &str, room: &str, needle: &[u8]) {
    crate::eventually(|| async move {
        postgres_board(url, room)
            .await
            .ok()
            .flatten()
            .is_some_and(|board| memchr::memmem::find(&board, needle).is_some())
    })
    .await
    .unwrap_or_else(|_| panic!("the board store never held {:?}", String::from_utf8_lossy(needle)));
}

/// Waits until `node` has unloaded the room from memory, so that its next join loads it.
pub async fn unloaded(node: &NodeProcess, room: &str) {
    let logs = node.logs.clone();
    crate::eventually(|| {
        let logs = logs.clone();
        async move { logs.lock().unwrap().iter().any(|line| line.contains("idle room unloaded") && line.contains(room)) }
    })
    .await
    .expect("the idle room is unloaded");
}

/// Appends an observation card `{id, author, phase, body, created_ms}` to `doc`'s board, as
/// the web client builds one.
pub fn push_card(doc: &yrs::Doc, author: &str, phase: &str, body: &str) {
    use yrs::{Array, Map, MapPrelim, TextPrelim, Transact};
    let observations = doc.get_or_insert_array("observations");
    let mut txn = doc.transact_mut();
    let id = format!("card-{}", observations.len(&txn));
    let card = observations.push_back(
        &mut txn,
        MapPrelim::from([
            ("id", yrs::Any::from(id)),
            ("author", yrs::Any::from(author)),
            ("phase", yrs::Any::from(phase)),
            ("created_ms", yrs::Any::from(0.0)),
        ]),
    );
    card.insert(&mut txn, "body", TextPrelim::new(body));
}
