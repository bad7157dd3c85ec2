//! The servers under test, each started as a child process on loopback, and what `/proc` says
//! about them.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use balint_client::seal::RoomKey;

use crate::client::SealedRoom;

/// A kind of server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `balint-room`, this workspace's server, in its default embedded mode.
    Balint,
    /// The same server and flags, its rooms created sealed (`"sealed": true`): members connect
    /// with `sealed=1`, seal every edit under a room key the generator draws (and the server
    /// never sees), and open every entry the server forwards. Group and many groups only.
    BalintSealed,
    /// `balint-room` with `--redis-url`: every update is also published on the room's Redis
    /// channel (and comes back to the node, which skips its own), presence lives in Redis.
    BalintRedis,
    /// Two `balint-room` nodes on one Redis, each room's members split between them: every
    /// edit crosses Redis to reach half of its room. CPU and RSS are the two nodes' sum.
    BalintPair,
    /// `balint-relay`, the floor on the server's own stack (axum, multi-thread tokio).
    Relay,
    /// `balint-lean-relay`, the lean floor (tokio-tungstenite, one thread).
    LeanRelay,
    /// Two `balint-lean-relay`s on one Redis (`--redis-url`), each room's members split
    /// between them as for `BalintPair`: the lean floor of two nodes. Group and many groups
    /// only.
    LeanPair,
    /// `balint-lean-relay --apply-updates`: the lean floor that also applies every edit to a
    /// yrs document of its room, the least per-edit work of a server that keeps the board.
    /// Group and many groups only.
    LeanYrs,
    /// The reference `y-websocket` 1.5.4 server (`bin/server.js`).
    YWebsocket,
    /// The current reference server, `@y/websocket-server` (`src/server.js`).
    YWebsocketServer,
    /// Hocuspocus (`@hocuspocus/server`), started by `bench/peers/hocuspocus.mjs`. Its clients
    /// prefix every message with the document name and authenticate first.
    Hocuspocus,
    /// y-sweet, the yrs-based Rust peer.
    YSweet,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 12] = [
        Kind::Balint,
        Kind::BalintSealed,
        Kind::BalintRedis,
        Kind::BalintPair,
        Kind::Relay,
        Kind::LeanRelay,
        Kind::LeanPair,
        Kind::LeanYrs,
        Kind::YWebsocket,
        Kind::YWebsocketServer,
        Kind::Hocuspocus,
        Kind::YSweet,
    ];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Balint => "balint-room",
            Kind::BalintSealed => "balint-room sealed",
            Kind::BalintRedis => "balint-room+redis",
            Kind::BalintPair => "balint-room×2+redis",
            Kind::Relay => "relay",
            Kind::LeanRelay => "lean-relay",
            Kind::LeanPair => "lean-relay×2+redis",
            Kind::LeanYrs => "lean-relay+yrs",
            Kind::YWebsocket => "y-websocket",
            Kind::YWebsocketServer => "y-websocket-server",
            Kind::Hocuspocus => "hocuspocus",
            Kind::YSweet => "y-sweet",
        }
    }

    /// Whether this is one of the peer servers (not ours, not a floor).
    pub fn is_peer(self) -> bool {
        matches!(self, Kind::YWebsocket | Kind::YWebsocketServer | Kind::Hocuspocus | Kind::YSweet)
    }

    /// Whether a room (a document) can be set up ahead on this server, before anyone joins:
    /// Balint Room's `POST /api/rooms`, y-sweet's `POST /doc/new`. On the others a room exists
    /// only while someone is connected to it.
    pub fn creates_rooms(self) -> bool {
        matches!(self, Kind::Balint | Kind::BalintRedis | Kind::BalintPair | Kind::YSweet)
    }

    /// Whether this target runs only the traffic scenarios (group and many groups).
    pub fn traffic_only(self) -> bool {
        matches!(self, Kind::BalintSealed | Kind::LeanPair | Kind::LeanYrs)
    }

    /// Parses a name from the command line (`balint-room-sealed` is taken for
    /// `balint-room sealed`, for shells).
    pub fn parse(name: &str) -> anyhow::Result<Kind> {
        if name == "balint-room-sealed" {
            return Ok(Kind::BalintSealed);
        }
        Kind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| anyhow!("unknown target {name}"))
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `target/release/balint-room`.
    pub server: PathBuf,
    /// `target/release/balint-relay`.
    pub relay: PathBuf,
    /// `target/release/balint-lean-relay`.
    pub lean_relay: PathBuf,
    /// `bench/peers/node_modules/y-websocket/bin/server.js`.
    pub y_websocket: PathBuf,
    /// `bench/peers/y-websocket-server/node_modules/@y/websocket-server/src/server.js`.
    pub y_websocket_server: PathBuf,
    /// `bench/peers/hocuspocus.mjs` (with `@hocuspocus/server` installed next to it).
    pub hocuspocus: PathBuf,
    /// `y-sweet` on PATH, if any.
    pub y_sweet: Option<PathBuf>,
    /// Where logs and data directories go.
    pub work: PathBuf,
    /// Whether the relay sets TCP_NODELAY.
    pub relay_nodelay: bool,
    /// The Redis that `balint-room+redis` uses, if any.
    pub redis_url: Option<String>,
    /// The relay's per-socket read buffer, if not its default.
    pub relay_read_buffer: Option<usize>,
}

impl Programs {
    /// Whether `kind` can be run on this machine, or why not.
    pub fn available(&self, kind: Kind) -> Result<(), String> {
        let check = |p: &Path| if p.exists() { Ok(()) } else { Err(format!("{} not found", p.display())) };
        match kind {
            Kind::Balint | Kind::BalintSealed => check(&self.server),
            Kind::BalintRedis | Kind::BalintPair => {
                check(&self.server)?;
                self.redis_url.as_ref().map(|_| ()).ok_or_else(|| "no --redis-url given".to_owned())
            }
            Kind::Relay => check(&self.relay),
            Kind::LeanRelay | Kind::LeanYrs => check(&self.lean_relay),
            Kind::LeanPair => {
                check(&self.lean_relay)?;
                self.redis_url.as_ref().map(|_| ()).ok_or_else(|| "no --redis-url given".to_owned())
            }
            Kind::YWebsocket => check(&self.y_websocket),
            Kind::YWebsocketServer => check(&self.y_websocket_server),
            Kind::Hocuspocus => {
                check(&self.hocuspocus)?;
                let dir = self.hocuspocus.parent().unwrap_or(Path::new("."));
                check(&dir.join("node_modules/@hocuspocus/server/package.json"))
            }
            Kind::YSweet => self.y_sweet.as_ref().map(|_| ()).ok_or_else(|| "y-sweet is not on PATH".to_owned()),
        }
    }
}

/// Limits given to `balint-room` so that the generator, not a limit, is what is measured.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// `--max-board-bytes`.
    pub max_board_bytes: usize,
}

/// A running server.
pub struct Running {
    /// Which one.
    pub kind: Kind,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    http: reqwest::Client,
    data_dir: Option<PathBuf>,
    next_room: usize,
    /// The Redis the server uses, if any.
    pub redis: Option<String>,
    /// The second node of a pair.
    peer: Option<Box<Running>>,
}

/// A room on a running server: how each member reaches it.
#[derive(Debug, Clone)]
pub struct RoomLink {
    base: String,
    /// The same room on the second node of a pair: members alternate between the two.
    other: Option<String>,
    joined: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Whether members open the room protocol with `hello`.
    pub hello: bool,
    /// A sealed room's id and key: members connect with `sealed=1` and no name, and seal.
    pub sealed: Option<SealedRoom>,
    /// Hocuspocus's document name: members prefix every message with it and authenticate.
    pub address: Option<String>,
}

impl RoomLink {
    /// The WebSocket URL of member `name` (of the next member, alternating between the nodes
    /// of a pair).
    pub fn url(&self, name: &str) -> String {
        let n = self.joined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = match &self.other {
            Some(other) if n % 2 == 1 => other,
            _ => &self.base,
        };
        // A sealed client sends no name: a clear name in the URL would reach the server.
        if base.contains('?') && self.sealed.is_none() {
            format!("{base}&name={name}")
        } else {
            base.clone()
        }
    }

    fn new(base: String, hello: bool) -> Self {
        RoomLink { base, other: None, joined: Default::default(), hello, sealed: None, address: None }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Running {
    /// Starts `kind` on a free loopback port (two, for a pair) and waits until it listens.
    pub fn start(kind: Kind, programs: &Programs, label: &str, limits: ServerLimits) -> anyhow::Result<Running> {
        if kind == Kind::BalintSealed {
            return Self::spawn(kind, Kind::Balint, programs, label, limits);
        }
        let node = match kind {
            Kind::BalintPair => Kind::BalintRedis,
            Kind::LeanPair => Kind::LeanRelay,
            _ => return Self::spawn(kind, kind, programs, label, limits),
        };
        let mut first = Self::spawn(kind, node, programs, label, limits)?;
        let second = Self::spawn(kind, node, programs, &format!("{label}-b"), limits)?;
        first.peer = Some(Box::new(second));
        Ok(first)
    }

    /// The process ids of every node.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(self.peer.iter().map(|p| p.child.id()));
        pids
    }

    fn spawn(
        kind: Kind,
        as_kind: Kind,
        programs: &Programs,
        label: &str,
        limits: ServerLimits,
    ) -> anyhow::Result<Running> {
        std::fs::create_dir_all(&programs.work)?;
        let log = std::fs::File::create(programs.work.join(format!("{}-{label}.log", kind.name().replace(' ', "-"))))?;
        let kind_shown = kind;
        let kind = as_kind;
        let mut data_dir = None;
        let mut command;
        let mut known_port = None;
        match kind {
            Kind::Balint | Kind::BalintSealed | Kind::BalintRedis | Kind::BalintPair => {
                let dir = programs.work.join(format!("data-{}-{label}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                command = Command::new(&programs.server);
                command
                    .args(["--bind", "127.0.0.1:0"])
                    .arg("--data-dir")
                    .arg(&dir)
                    .args(["--rooms-per-ip-per-minute", "1000000"])
                    .args(["--messages-per-sec", "1000000"])
                    .args(["--bytes-per-sec", "1073741824"])
                    .args(["--max-rooms", "100000"])
                    // Every member connects from 127.0.0.1: the per-address cap (200) would
                    // refuse the many-groups and idle shapes.
                    .args(["--max-connections-per-address", "100000"])
                    .args(["--max-board-bytes", &limits.max_board_bytes.to_string()]);
                if kind == Kind::BalintRedis {
                    command.args(["--redis-url", programs.redis_url.as_deref().context("--redis-url")?]);
                }
                if kind_shown == Kind::BalintPair {
                    // Both nodes must accept the links either one signs.
                    command.args(["--secret", "balint-bench shared secret for a pair of nodes"]);
                }
                data_dir = Some(dir);
            }
            Kind::Relay => {
                command = Command::new(&programs.relay);
                command.args([
                    "--bind",
                    "127.0.0.1:0",
                    "--nodelay",
                    if programs.relay_nodelay { "true" } else { "false" },
                ]);
                if let Some(bytes) = programs.relay_read_buffer {
                    command.args(["--read-buffer-bytes", &bytes.to_string()]);
                }
            }
            Kind::LeanRelay | Kind::LeanPair | Kind::LeanYrs => {
                command = Command::new(&programs.lean_relay);
                command.args([
                    "--bind",
                    "127.0.0.1:0",
                    "--nodelay",
                    if programs.relay_nodelay { "true" } else { "false" },
                ]);
                if kind_shown == Kind::LeanPair {
                    command.args(["--redis-url", programs.redis_url.as_deref().context("--redis-url")?]);
                }
                if kind_shown == Kind::LeanYrs {
                    command.arg("--apply-updates");
                }
            }
            Kind::YWebsocket | Kind::YWebsocketServer | Kind::Hocuspocus => {
                let port = free_port()?;
                known_port = Some(port);
                let script = match kind {
                    Kind::YWebsocket => &programs.y_websocket,
                    Kind::YWebsocketServer => &programs.y_websocket_server,
                    _ => &programs.hocuspocus,
                };
                command = Command::new("node");
                command.arg(script).env("HOST", "127.0.0.1").env("PORT", port.to_string());
            }
            Kind::YSweet => {
                let port = free_port()?;
                known_port = Some(port);
                command = Command::new(programs.y_sweet.as_ref().context("y-sweet is not on PATH")?);
                command.args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()]);
            }
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::from(log)).stdin(Stdio::null()).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr: SocketAddr = match known_port {
            None => loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = match rx.recv_timeout(left) {
                    Ok(line) => line,
                    Err(_) => {
                        let _ = child.kill();
                        bail!("{} did not print its address", kind.name());
                    }
                };
                if let Some(rest) = line.split("running on http://").nth(1) {
                    break rest.trim().parse()?;
                }
            },
            Some(port) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                while std::net::TcpStream::connect(addr).is_err() {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        bail!("{} did not listen on {addr}", kind.name());
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
                addr
            }
        };
        // Keep draining standard output so the child never blocks on it.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let http = reqwest::Client::builder().no_proxy().build()?;
        let redis = programs.redis_url.clone().filter(|_| kind == Kind::BalintRedis || kind_shown == Kind::LeanPair);
        Ok(Running { kind: kind_shown, addr, child, http, data_dir, next_room: 0, redis, peer: None })
    }

    /// Creates a room (where the server has rooms to create) and says how to join it.
    pub async fn room(&mut self) -> anyhow::Result<RoomLink> {
        self.next_room += 1;
        let addr = self.addr;
        match self.kind {
            Kind::Balint | Kind::BalintSealed | Kind::BalintRedis | Kind::BalintPair => {
                let sealed = self.kind == Kind::BalintSealed;
                let answer: serde_json::Value = self
                    .http
                    .post(format!("http://{addr}/api/rooms"))
                    .json(&serde_json::json!({ "sealed": sealed }))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let room = answer["room"].as_str().context("room")?;
                let token = answer["invite_token"].as_str().context("invite_token")?;
                if sealed {
                    // The generator draws the key, as the creating browser does; it stays here.
                    let mut link = RoomLink::new(format!("ws://{addr}/ws/{room}?token={token}&sealed=1"), true);
                    link.sealed = Some(SealedRoom { room: room.to_owned(), key: RoomKey::generate()? });
                    return Ok(link);
                }
                let mut link = RoomLink::new(format!("ws://{addr}/ws/{room}?token={token}"), true);
                link.other = self.peer.as_ref().map(|p| format!("ws://{}/ws/{room}?token={token}", p.addr));
                Ok(link)
            }
            Kind::Relay
            | Kind::LeanRelay
            | Kind::LeanPair
            | Kind::LeanYrs
            | Kind::YWebsocket
            | Kind::YWebsocketServer => {
                let mut link = RoomLink::new(format!("ws://{addr}/room-{}", self.next_room), false);
                link.other = self.peer.as_ref().map(|p| format!("ws://{}/room-{}", p.addr, self.next_room));
                Ok(link)
            }
            Kind::Hocuspocus => {
                // One socket may carry several documents: the URL names none, every message does.
                let mut link = RoomLink::new(format!("ws://{addr}/"), false);
                link.address = Some(format!("room-{}", self.next_room));
                Ok(link)
            }
            Kind::YSweet => {
                let answer: serde_json::Value = self
                    .http
                    .post(format!("http://{addr}/doc/new"))
                    .json(&serde_json::json!({}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let doc = answer["docId"].as_str().context("docId")?;
                Ok(RoomLink::new(format!("ws://{addr}/d/{doc}/ws/{doc}"), false))
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// CPU time a process has used, in seconds: its CPU-time clock (`clock_getcpuclockid`), which
/// the kernel keeps in nanoseconds for all of the process's threads, those that have ended
/// included. (`utime` and `stime` of `/proc/PID/stat` are the same time rounded to 10 ms
/// ticks: a third of a short window's figure.)
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return f64::NAN };
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out pointer; an error is returned, not undefined behaviour.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return f64::NAN;
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out pointer, `clock` a clock id the kernel just gave.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Commands a Redis server has processed so far (`INFO stats`), read with `redis-cli`.
pub fn redis_commands(url: &str) -> Option<u64> {
    let out = Command::new("redis-cli").args(["-u", url, "INFO", "stats"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time the processes have used, in seconds (see [`cpu_secs`]).
pub fn cpu_secs_of(pids: &[u32]) -> f64 {
    pids.iter().map(|&p| cpu_secs(p)).sum()
}

/// Resident set size of the processes together, in KiB.
pub fn rss_kib_of(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| rss_kib(p)).sum()
}
