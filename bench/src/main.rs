//! `balint-bench`: a load generator for Balint Room, run side by side against two floors (the
//! bare relay `balint-relay` on the server's own stack, and the lean relay `balint-lean-relay`)
//! and the peer servers, under the same generator in the same run. The report ends with a
//! summary of issue 16's targets: figures and "met" / "not met", printed, never asserted.
//!
//! Every server is started here as a child process on a free loopback port, once per scenario,
//! and measured from `/proc/PID` (CPU time, RSS). See `BENCHMARKS.md` for the method.

mod client;
mod scenario;
mod target;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use scenario::Outcome;
use target::{Kind, Programs, Running, ServerLimits};

#[derive(Parser, Debug)]
#[command(about = "Load benchmark: Balint Room side by side with a bare relay and the peer servers")]
struct Args {
    /// Targets, comma-separated: balint-room, balint-room sealed (or balint-room-sealed; group
    /// and many groups only), balint-room+redis, balint-room×2+redis, relay, lean-relay,
    /// lean-relay×2+redis and lean-relay+yrs (group and many groups only), y-websocket,
    /// y-websocket-server, hocuspocus, y-sweet. Unavailable ones are reported and skipped.
    #[arg(
        long,
        default_value = "balint-room,balint-room sealed,balint-room+redis,balint-room×2+redis,relay,lean-relay,lean-relay×2+redis,lean-relay+yrs,y-websocket,y-websocket-server,hocuspocus,y-sweet",
        value_delimiter = ','
    )]
    targets: Vec<String>,
    /// Scenarios, comma-separated: group, many, late, idle, ahead (rooms set up ahead).
    #[arg(long, default_value = "group,many,late,idle,ahead", value_delimiter = ',')]
    scenarios: Vec<String>,

    /// Group: members of the one room.
    #[arg(long, default_value_t = 12)]
    group_members: usize,
    /// Group: edits per second per member.
    #[arg(long, default_value_t = 5.0)]
    group_hz: f64,
    /// Group: seconds of typing.
    #[arg(long, default_value_t = 5.0)]
    group_secs: f64,

    /// Many groups: rooms (the shape is 1,000; the default is scaled to a shared 2-core
    /// machine).
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Many groups: members per room.
    #[arg(long, default_value_t = 10)]
    room_members: usize,
    /// Many groups: edits per second per member.
    #[arg(long, default_value_t = 1.0)]
    many_hz: f64,
    /// Many groups: seconds of typing.
    #[arg(long, default_value_t = 6.0)]
    many_secs: f64,

    /// Late joiner: board size in MiB of text.
    #[arg(long, default_value_t = 16.0)]
    board_mib: f64,
    /// Late joiner: characters per update while the board is written.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk: usize,
    /// Late joiner: newcomers timed, one after the other.
    #[arg(long, default_value_t = 3)]
    joins: usize,

    /// Idle: connected members (the shape is 10,000).
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Idle: members per room.
    #[arg(long, default_value_t = 10)]
    idle_room_size: usize,
    /// Idle: seconds measured once everyone is in (the server's CPU over it is read in
    /// nanoseconds, from its CPU-time clock).
    #[arg(long, default_value_t = 10.0)]
    idle_secs: f64,

    /// Rooms set up ahead: rooms created, nobody joining (the shape is 1,000).
    #[arg(long, default_value_t = 1000)]
    ahead_rooms: usize,
    /// Rooms set up ahead: seconds of each idle window (the empty node, then with the rooms).
    #[arg(long, default_value_t = 10.0)]
    ahead_secs: f64,

    /// The balint-room binary.
    #[arg(long)]
    server: Option<PathBuf>,
    /// The balint-relay binary.
    #[arg(long)]
    relay: Option<PathBuf>,
    /// The balint-lean-relay binary.
    #[arg(long)]
    lean_relay: Option<PathBuf>,
    /// y-websocket's bin/server.js.
    #[arg(long)]
    y_websocket: Option<PathBuf>,
    /// @y/websocket-server's src/server.js.
    #[arg(long)]
    y_websocket_server: Option<PathBuf>,
    /// The script that starts Hocuspocus (bench/peers/hocuspocus.mjs).
    #[arg(long)]
    hocuspocus: Option<PathBuf>,
    /// Whether the relays set TCP_NODELAY on their sockets (`false` shows what Nagle's algorithm
    /// costs in latency, as `balint-room` does not set it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    relay_nodelay: bool,
    /// The relay's per-socket read buffer in bytes (default: axum's 128 KiB, as balint-room).
    #[arg(long)]
    relay_read_buffer: Option<usize>,
    /// The Redis for the `balint-room+redis` target (`bench/run.sh` starts one of its own).
    #[arg(long)]
    redis_url: Option<String>,
    /// Where logs go, and the report (`results.md`).
    #[arg(long)]
    work: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Group,
    Many,
    Late,
    Idle,
    Ahead,
}

impl Scenario {
    fn parse(name: &str) -> anyhow::Result<Scenario> {
        Ok(match name {
            "group" => Scenario::Group,
            "many" => Scenario::Many,
            "late" => Scenario::Late,
            "idle" => Scenario::Idle,
            "ahead" => Scenario::Ahead,
            other => anyhow::bail!("unknown scenario {other}"),
        })
    }
    fn label(self) -> &'static str {
        match self {
            Scenario::Group => "group",
            Scenario::Many => "many",
            Scenario::Late => "late",
            Scenario::Idle => "idle",
            Scenario::Ahead => "ahead",
        }
    }
}

/// One scenario's outcomes, per target.
type ScenarioResults = (Scenario, Vec<(Kind, anyhow::Result<Outcome>)>);

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cores} cores ({model}), {:.1} GiB RAM, load average at start {}", mem as f64 / 1048576.0, load.join(" "))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = root.join("target").join("release");
    let programs = Programs {
        server: args.server.clone().unwrap_or_else(|| release.join("balint-room")),
        relay: args.relay.clone().unwrap_or_else(|| release.join("balint-relay")),
        lean_relay: args.lean_relay.clone().unwrap_or_else(|| release.join("balint-lean-relay")),
        y_websocket: args
            .y_websocket
            .clone()
            .unwrap_or_else(|| root.join("bench/peers/node_modules/y-websocket/bin/server.js")),
        y_websocket_server: args.y_websocket_server.clone().unwrap_or_else(|| {
            root.join("bench/peers/y-websocket-server/node_modules/@y/websocket-server/src/server.js")
        }),
        hocuspocus: args.hocuspocus.clone().unwrap_or_else(|| root.join("bench/peers/hocuspocus.mjs")),
        y_sweet: find_on_path("y-sweet"),
        work: args.work.clone().unwrap_or_else(|| root.join("target").join("bench")),
        relay_nodelay: args.relay_nodelay,
        redis_url: args.redis_url.clone(),
        relay_read_buffer: args.relay_read_buffer,
    };
    let scenarios = args.scenarios.iter().map(|s| Scenario::parse(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for name in &args.targets {
        let kind = Kind::parse(name)?;
        match programs.available(kind) {
            Ok(()) => targets.push(kind),
            Err(why) => skipped.push(format!("{}: {why}", kind.name())),
        }
    }
    let board_bytes = (args.board_mib * 1048576.0) as usize;
    let limits = ServerLimits { max_board_bytes: board_bytes * 2 + (4 << 20) };

    let mut report = String::new();
    writeln!(report, "machine: {}", machine())?;
    for s in &skipped {
        writeln!(report, "skipped {s}")?;
    }
    println!("{report}");
    let mut all: Vec<ScenarioResults> = Vec::new();
    for &scenario in &scenarios {
        let title = match scenario {
            Scenario::Group => format!(
                "group: 1 room x {} members, {} Hz each, {} s",
                args.group_members, args.group_hz, args.group_secs
            ),
            Scenario::Many => format!(
                "many groups: {} rooms x {} members, {} Hz each, {} s",
                args.rooms, args.room_members, args.many_hz, args.many_secs
            ),
            Scenario::Late => format!(
                "late joiner: {} MiB board written in {} KiB updates, {} joins",
                args.board_mib,
                args.chunk / 1024,
                args.joins
            ),
            Scenario::Idle => format!(
                "idle: {} members in rooms of {}, {} s measured",
                args.idle, args.idle_room_size, args.idle_secs
            ),
            Scenario::Ahead => format!(
                "rooms set up ahead: {} rooms created, nobody joined, {} s measured",
                args.ahead_rooms, args.ahead_secs
            ),
        };
        eprintln!("== {title}");
        let mut results: Vec<(Kind, anyhow::Result<Outcome>)> = Vec::new();
        let traffic = matches!(scenario, Scenario::Group | Scenario::Many);
        for &kind in targets.iter().filter(|k| traffic || !k.traffic_only()) {
            if scenario == Scenario::Ahead && !kind.creates_rooms() {
                // Shown as "n/a" in the table: nothing to create, nothing to run.
                continue;
            }
            eprintln!("   {} ...", kind.name());
            let outcome = run_one(kind, scenario, &programs, limits, &args, board_bytes).await;
            if let Err(e) = &outcome {
                eprintln!("   {} failed: {e:#}", kind.name());
            }
            results.push((kind, outcome));
        }
        let shown: Vec<Kind> = targets.iter().copied().filter(|k| traffic || !k.traffic_only()).collect();
        let table = table(scenario, &title, &results, &shown);
        println!("{table}");
        report.push('\n');
        report.push_str(&table);
        all.push((scenario, results));
    }
    let summary = summary(&all, &args);
    println!("{summary}");
    report.push('\n');
    report.push_str(&summary);
    std::fs::create_dir_all(&programs.work)?;
    let path = programs.work.join("results.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

async fn run_one(
    kind: Kind,
    scenario: Scenario,
    programs: &Programs,
    limits: ServerLimits,
    args: &Args,
    board_bytes: usize,
) -> anyhow::Result<Outcome> {
    let mut server = Running::start(kind, programs, scenario.label(), limits)?;
    // Let the process finish starting before its baseline RSS is read.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    match scenario {
        Scenario::Group => scenario::traffic(&mut server, 1, args.group_members, args.group_hz, args.group_secs).await,
        Scenario::Many => {
            scenario::traffic(&mut server, args.rooms, args.room_members, args.many_hz, args.many_secs).await
        }
        Scenario::Late => scenario::late_joiner(&mut server, board_bytes, args.chunk.max(1), args.joins.max(1)).await,
        Scenario::Idle => scenario::idle(&mut server, args.idle, args.idle_room_size, args.idle_secs).await,
        Scenario::Ahead => scenario::ahead(&mut server, args.ahead_rooms, args.ahead_secs).await,
    }
}

fn fmt(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "n/a".to_owned()
    }
}

/// `value / reference`, as "1.23x".
fn ratio(value: f64, reference: Option<f64>) -> String {
    match reference {
        Some(r) if r > 0.0 && value.is_finite() => format!("{:.2}x", value / r),
        _ => "n/a".to_owned(),
    }
}

/// Issue 15's cost figure: the sealed room's server CPU per delivery over the plain room's,
/// both from this run. Printed, not asserted.
fn sealed_ratio(results: &[(Kind, anyhow::Result<Outcome>)]) -> Option<String> {
    let of = |kind: Kind| results.iter().find(|(k, _)| *k == kind).and_then(|(_, o)| o.as_ref().ok());
    let (plain, sealed) = (of(Kind::Balint)?, of(Kind::BalintSealed)?);
    let incomplete =
        if plain.ratio() == 1.0 && sealed.ratio() == 1.0 { "" } else { " (a delivery ratio is not 1: not comparable)" };
    Some(format!(
        "- sealed/plain server CPU per delivery: {} ({} vs {} µs; issue 15's target: within 1.2x){incomplete}",
        ratio(sealed.cpu_per_delivery_us(), Some(plain.cpu_per_delivery_us())),
        fmt(sealed.cpu_per_delivery_us(), 2),
        fmt(plain.cpu_per_delivery_us(), 2),
    ))
}

fn table(scenario: Scenario, title: &str, results: &[(Kind, anyhow::Result<Outcome>)], shown: &[Kind]) -> String {
    let complete = |o: &Outcome| o.ratio() == 1.0;
    // The figure each scenario ranks by, and the latency figure.
    let cost = |o: &Outcome| match scenario {
        Scenario::Idle | Scenario::Ahead => o.server_cpu / o.secs.max(1e-9) * 1e3,
        _ => o.cpu_per_delivery_us(),
    };
    let of = |kind: Kind| results.iter().find(|(k, _)| *k == kind).and_then(|(_, o)| o.as_ref().ok());
    let relay = of(Kind::Relay);
    let lean = of(Kind::LeanRelay);
    let peers: Vec<&Outcome> =
        results.iter().filter(|(k, _)| k.is_peer()).filter_map(|(_, o)| o.as_ref().ok()).collect();
    let best_peer = |f: &dyn Fn(&Outcome) -> f64| {
        peers
            .iter()
            .filter(|o| matches!(scenario, Scenario::Idle | Scenario::Ahead) || complete(o))
            .map(|o| f(o))
            .filter(|v| v.is_finite())
            .reduce(f64::min)
    };
    let relay_cost = relay.map(cost);
    let lean_cost = lean.map(cost);
    let peer_cost = best_peer(&cost);
    let peer_p99 = best_peer(&|o: &Outcome| o.quantile_ms(0.99));
    let peer_rss = best_peer(&|o: &Outcome| o.rss_per_conn_kib());
    let relay_rss = relay.map(|o| o.rss_per_conn_kib());

    let mut t = String::new();
    let _ = writeln!(t, "### {title}\n");
    match scenario {
        Scenario::Group | Scenario::Many => {
            let _ = writeln!(t, "| target | conns | deliveries/s | p50 ms | p99 ms | max ms | server CPU µs/delivery | vs relay | vs lean floor | vs best peer | p99 vs best peer | RSS MiB | RSS KiB/conn | delivered/expected | generator CPU s |");
            let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        }
        Scenario::Late => {
            let _ = writeln!(t, "| target | joins | board fill s | sync p50 ms | sync max ms | server CPU ms/join | vs relay | vs best peer | RSS MiB | full boards/joins | generator CPU s |");
            let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|");
        }
        Scenario::Idle => {
            let _ = writeln!(t, "| target | conns | connect s | RSS MiB | RSS KiB/conn | vs relay | vs best peer | idle server CPU ms/s | vs relay |");
            let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
        }
        Scenario::Ahead => {
            let _ = writeln!(t, "| target | rooms | create s | RSS MiB | RSS KiB/room | vs best peer | idle server CPU ms/s, empty | idle server CPU ms/s, with the rooms |");
            let _ = writeln!(t, "|---|---|---|---|---|---|---|---|");
        }
    }
    let mut problems = String::new();
    let mut notes = String::new();
    for &kind in shown {
        let Some((_, outcome)) = results.iter().find(|(k, _)| *k == kind) else {
            if scenario == Scenario::Ahead {
                let _ = writeln!(t, "| {} | n/a: a room exists only while someone is connected to it |", kind.name());
            }
            continue;
        };
        let o = match outcome {
            Ok(o) => o,
            Err(e) => {
                let _ = writeln!(t, "| {} | failed: {} |", kind.name(), format!("{e:#}").replace('|', "/"));
                continue;
            }
        };
        let rss_mib = o.rss_kib as f64 / 1024.0;
        match scenario {
            Scenario::Group | Scenario::Many => {
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} = {} | {} |",
                    kind.name(),
                    o.connections,
                    fmt(o.delivered as f64 / o.secs, 0),
                    fmt(o.quantile_ms(0.5), 2),
                    fmt(o.quantile_ms(0.99), 2),
                    fmt(o.quantile_ms(1.0), 2),
                    fmt(o.cpu_per_delivery_us(), 2),
                    ratio(cost(o), relay_cost),
                    ratio(cost(o), lean_cost),
                    ratio(cost(o), peer_cost),
                    ratio(o.quantile_ms(0.99), peer_p99),
                    fmt(rss_mib, 1),
                    fmt(o.rss_per_conn_kib(), 1),
                    o.delivered,
                    o.expected,
                    fmt(o.ratio(), 4),
                    fmt(o.bench_cpu, 2),
                );
            }
            Scenario::Late => {
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
                    kind.name(),
                    o.latencies_us.len(),
                    fmt(o.setup_secs, 2),
                    fmt(o.quantile_ms(0.5), 1),
                    fmt(o.quantile_ms(1.0), 1),
                    fmt(o.cpu_per_delivery_us() / 1000.0, 1),
                    ratio(cost(o), relay_cost),
                    ratio(cost(o), peer_cost),
                    fmt(rss_mib, 1),
                    o.delivered,
                    o.expected,
                    fmt(o.bench_cpu, 2),
                );
            }
            Scenario::Idle => {
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    kind.name(),
                    o.connections,
                    fmt(o.setup_secs, 2),
                    fmt(rss_mib, 1),
                    fmt(o.rss_per_conn_kib(), 1),
                    ratio(o.rss_per_conn_kib(), relay_rss),
                    ratio(o.rss_per_conn_kib(), peer_rss),
                    fmt(cost(o), 2),
                    ratio(cost(o), relay_cost),
                );
            }
            Scenario::Ahead => {
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    kind.name(),
                    o.connections,
                    fmt(o.setup_secs, 2),
                    fmt(rss_mib, 1),
                    fmt(o.rss_per_conn_kib(), 1),
                    ratio(o.rss_per_conn_kib(), peer_rss),
                    fmt(o.empty_cpu_per_s * 1e3, 2),
                    fmt(cost(o), 2),
                );
            }
        }
        if let Some(commands) = o.redis_commands {
            let per = if o.delivered > 0 { commands as f64 / o.delivered as f64 } else { f64::NAN };
            let _ = writeln!(
                notes,
                "- {}: Redis processed {commands} commands in the measured window, {} per delivery",
                kind.name(),
                fmt(per, 4)
            );
        }
        for p in &o.problems {
            let _ = writeln!(problems, "- {}: {p}", kind.name());
        }
    }
    if let Some(line) = sealed_ratio(results) {
        let _ = writeln!(notes, "{line}");
    }
    if !notes.is_empty() {
        let _ = writeln!(t, "\n{notes}");
    }
    if !problems.is_empty() {
        let _ = writeln!(t, "\nproblems:\n{problems}");
    }
    t
}

/// What a target line of the summary says.
enum Verdict {
    Met,
    NotMet,
    /// Not met, and beyond reach in this run: the floor alone, in the same run, costs more
    /// than the target allows.
    BelowFloor,
    /// Not measured in this run, and why.
    Missing(&'static str),
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::NotMet
        }
    }
    /// `ratio <= limit`, unless the ratio cannot be read (a CPU figure of 0 or unreadable).
    fn at_most(ratio: f64, limit: f64) -> Verdict {
        if ratio.is_finite() && ratio > 0.0 {
            Verdict::of(ratio <= limit)
        } else {
            Verdict::Missing("a CPU figure is 0 or unreadable")
        }
    }
    fn text(&self) -> String {
        match self {
            Verdict::Met => "met".to_owned(),
            Verdict::NotMet => "**not met**".to_owned(),
            Verdict::BelowFloor => "**not met; the target is below the floor** (see the figures)".to_owned(),
            Verdict::Missing(why) => format!("not measured: {why}"),
        }
    }
}

/// Idle CPU a node may spend with the rooms set up ahead above what it spends empty, ms/s,
/// for "no CPU on rooms in which nothing is due" to read as met: the CPU-time clock's figures of an idle
/// process on this machine move by a few hundredths of a ms/s between windows.
const IDLE_ROOMS_SLACK_MS_PER_S: f64 = 0.1;

/// Issue 16's targets, each with what this run measured and "met" / "not met" / "not
/// measured". Printed, never asserted: a run does not fail on them.
fn summary(all: &[ScenarioResults], args: &Args) -> String {
    let of = |scenario: Scenario, kind: Kind| {
        all.iter()
            .find(|(s, _)| *s == scenario)
            .and_then(|(_, r)| r.iter().find(|(k, _)| *k == kind))
            .and_then(|(_, o)| o.as_ref().ok())
    };
    let peers_of = |scenario: Scenario| -> Vec<(Kind, &Outcome)> {
        all.iter()
            .filter(|(s, _)| *s == scenario)
            .flat_map(|(_, r)| r.iter())
            .filter(|(k, _)| k.is_peer())
            .filter_map(|(k, o)| o.as_ref().ok().map(|o| (*k, o)))
            .collect()
    };
    let mut rows: Vec<(String, String, Verdict)> = Vec::new();

    // Fan-out CPU against the lean floor, and two nodes against one, in both traffic shapes.
    for (scenario, shape) in [(Scenario::Group, "group"), (Scenario::Many, "many groups")] {
        let target = format!("fan-out CPU per delivery ≤ 1.25× the lean floor ({shape})");
        match (of(scenario, Kind::Balint), of(scenario, Kind::LeanRelay)) {
            (Some(b), Some(l)) if b.ratio() == 1.0 && l.ratio() == 1.0 => {
                let r = b.cpu_per_delivery_us() / l.cpu_per_delivery_us();
                let mut figure = format!(
                    "{} ({} vs {} µs)",
                    ratio(b.cpu_per_delivery_us(), Some(l.cpu_per_delivery_us())),
                    fmt(b.cpu_per_delivery_us(), 2),
                    fmt(l.cpu_per_delivery_us(), 2)
                );
                // What keeping a board costs a relay that does nothing else, beside it.
                if let Some(y) = of(scenario, Kind::LeanYrs).filter(|y| y.ratio() == 1.0) {
                    figure.push_str(&format!(
                        "; the lean floor applying each edit to a yrs board: {} ({} µs)",
                        ratio(y.cpu_per_delivery_us(), Some(l.cpu_per_delivery_us())),
                        fmt(y.cpu_per_delivery_us(), 2)
                    ));
                }
                rows.push((target, figure, Verdict::at_most(r, 1.25)));
            }
            (Some(_), Some(_)) => {
                rows.push((target, "a delivery ratio is not 1".to_owned(), Verdict::Missing("not comparable")))
            }
            _ => rows.push((target, String::new(), Verdict::Missing("balint-room or lean-relay did not run"))),
        }
    }

    let target = "idle memory ≤ 12 KiB per connection at 10,000 members, below every peer".to_owned();
    match of(Scenario::Idle, Kind::Balint) {
        Some(b) => {
            let kib = b.rss_per_conn_kib();
            let peers = peers_of(Scenario::Idle);
            let best =
                peers.iter().map(|(k, o)| (*k, o.rss_per_conn_kib())).filter(|(_, v)| v.is_finite()).reduce(|a, b| {
                    if b.1 < a.1 {
                        b
                    } else {
                        a
                    }
                });
            let scaled = if b.connections == 10_000 {
                String::new()
            } else {
                format!(" (at {} members: scaled, the target is at 10,000: `--idle 10000`)", b.connections)
            };
            let (below_peers, peer_text) = match best {
                Some((k, v)) => (kib < v, format!("; lowest peer {} {} KiB", k.name(), fmt(v, 1))),
                None => (true, "; no peer measured".to_owned()),
            };
            rows.push((
                target,
                format!("{} KiB/conn{peer_text}{scaled}", fmt(kib, 1)),
                Verdict::of(kib <= 12.0 && below_peers),
            ));
        }
        None => rows.push((target, String::new(), Verdict::Missing("the idle scenario did not run for balint-room"))),
    }

    let target = "a room set up ahead ≤ 16 KiB until someone joins".to_owned();
    match of(Scenario::Ahead, Kind::Balint) {
        Some(b) => {
            let kib = b.rss_per_conn_kib();
            let sweet = of(Scenario::Ahead, Kind::YSweet)
                .map(|y| format!("; y-sweet {} KiB per document", fmt(y.rss_per_conn_kib(), 1)))
                .unwrap_or_default();
            rows.push((
                target,
                format!("{} KiB/room over {} rooms{sweet}", fmt(kib, 1), b.connections),
                Verdict::of(kib <= 16.0),
            ));
        }
        None => rows.push((target, String::new(), Verdict::Missing("the ahead scenario did not run for balint-room"))),
    }

    let target = format!(
        "no CPU on rooms in which nothing is due (rooms set up ahead: within {IDLE_ROOMS_SLACK_MS_PER_S} ms/s of the empty node)"
    );
    match of(Scenario::Ahead, Kind::Balint) {
        Some(b) => {
            let (empty, with) = (b.empty_cpu_per_s * 1e3, b.server_cpu / b.secs.max(1e-9) * 1e3);
            let members = of(Scenario::Idle, Kind::Balint)
                .map(|o| {
                    let lean = of(Scenario::Idle, Kind::LeanRelay)
                        .map(|l| format!(", lean floor {}", fmt(l.server_cpu / l.secs.max(1e-9) * 1e3, 2)))
                        .unwrap_or_default();
                    format!(
                        "; with {} idle members: {} ms/s{lean}",
                        o.connections,
                        fmt(o.server_cpu / o.secs.max(1e-9) * 1e3, 2)
                    )
                })
                .unwrap_or_default();
            rows.push((
                target,
                format!(
                    "{} ms/s with {} rooms, {} ms/s empty ({} s windows){members}",
                    fmt(with, 2),
                    b.connections,
                    fmt(empty, 2),
                    args.ahead_secs
                ),
                Verdict::of(with - empty <= IDLE_ROOMS_SLACK_MS_PER_S),
            ));
        }
        None => rows.push((target, String::new(), Verdict::Missing("the ahead scenario did not run for balint-room"))),
    }

    let target = "server CPU per late join ≤ y-sweet's".to_owned();
    match (of(Scenario::Late, Kind::Balint), of(Scenario::Late, Kind::YSweet)) {
        (Some(b), Some(y)) => {
            let (bm, ym) = (b.cpu_per_delivery_us() / 1000.0, y.cpu_per_delivery_us() / 1000.0);
            rows.push((
                target,
                format!("{} ({} vs {} ms/join)", ratio(bm, Some(ym)), fmt(bm, 1), fmt(ym, 1)),
                if b.ratio() == 1.0 { Verdict::at_most(bm / ym, 1.0) } else { Verdict::NotMet },
            ));
        }
        (Some(_), None) => rows.push((target, String::new(), Verdict::Missing("y-sweet did not run"))),
        _ => rows.push((target, String::new(), Verdict::Missing("the late scenario did not run for balint-room"))),
    }

    let target = "two nodes on Redis ≤ 1.4× one node's CPU per delivery".to_owned();
    let mut figures = Vec::new();
    let mut met = true;
    let mut measured = 0;
    // Whether, in every shape measured, the lean floor's second node alone costs more per
    // delivery than the target leaves for Balint Room's (0.4× its one node).
    let mut beyond_floor = true;
    for (scenario, shape) in [(Scenario::Group, "group"), (Scenario::Many, "many groups")] {
        if let (Some(b), Some(p)) = (of(scenario, Kind::Balint), of(scenario, Kind::BalintPair)) {
            let r = p.cpu_per_delivery_us() / b.cpu_per_delivery_us();
            if !(r.is_finite() && r > 0.0) {
                figures.push(format!("{shape}: a CPU figure is 0 or unreadable"));
                continue;
            }
            met &= r <= 1.4 && p.ratio() == 1.0;
            // A pair that lost deliveries is not met, whatever the floor.
            beyond_floor &= p.ratio() == 1.0;
            measured += 1;
            // The lean floor's own two nodes against one, measured in the same run. Its second
            // node (the pair's CPU per delivery less the one node's) is what the hop through
            // Redis costs a relay that does nothing else; 1.4× leaves Balint Room's second node
            // 0.4× its one node.
            let floor = match (of(scenario, Kind::LeanRelay), of(scenario, Kind::LeanPair)) {
                (Some(l), Some(lp)) if lp.ratio() == 1.0 && l.ratio() == 1.0 => {
                    let (one, two) = (l.cpu_per_delivery_us(), lp.cpu_per_delivery_us());
                    let (hop, budget) = (two - one, 0.4 * b.cpu_per_delivery_us());
                    let above = hop > budget;
                    beyond_floor &= above;
                    format!(
                        "; the lean floor's two nodes {} its one ({} vs {} µs): its second node alone adds {} µs \
                         per delivery, {} the {} µs that 1.4× leaves",
                        ratio(two, Some(one)),
                        fmt(two, 2),
                        fmt(one, 2),
                        fmt(hop, 2),
                        if above { "above" } else { "within" },
                        fmt(budget, 2)
                    )
                }
                _ => {
                    beyond_floor = false;
                    String::new()
                }
            };
            figures.push(format!(
                "{shape} {} ({} vs {} µs{floor})",
                ratio(p.cpu_per_delivery_us(), Some(b.cpu_per_delivery_us())),
                fmt(p.cpu_per_delivery_us(), 2),
                fmt(b.cpu_per_delivery_us(), 2)
            ));
        }
    }
    rows.push((
        target,
        figures.join("; "),
        match (measured, met, beyond_floor) {
            (0, _, _) => Verdict::Missing("balint-room×2+redis did not run (no Redis?)"),
            (_, true, _) => Verdict::Met,
            (_, false, true) => Verdict::BelowFloor,
            (_, false, false) => Verdict::NotMet,
        },
    ));

    let target = "p99 fan-out latency ≤ the best peer's".to_owned();
    let mut figures = Vec::new();
    let mut met = true;
    let mut measured = 0;
    for (scenario, shape) in [(Scenario::Group, "group"), (Scenario::Many, "many groups")] {
        let Some(b) = of(scenario, Kind::Balint) else { continue };
        let best = peers_of(scenario)
            .into_iter()
            .filter(|(_, o)| o.ratio() == 1.0)
            .map(|(k, o)| (k, o.quantile_ms(0.99)))
            .filter(|(_, v)| v.is_finite())
            .reduce(|a, b| if b.1 < a.1 { b } else { a });
        if let Some((k, v)) = best {
            measured += 1;
            met &= b.quantile_ms(0.99) <= v;
            figures.push(format!("{shape} {} ms vs {} {} ms", fmt(b.quantile_ms(0.99), 2), k.name(), fmt(v, 2)));
        }
    }
    rows.push((
        target,
        figures.join("; "),
        if measured == 0 { Verdict::Missing("no peer completed a traffic scenario") } else { Verdict::of(met) },
    ));

    let target = "delivery ratio exactly 1 (every balint-room target, group and many groups)".to_owned();
    let mut short = Vec::new();
    let mut measured = 0;
    for (scenario, shape) in [(Scenario::Group, "group"), (Scenario::Many, "many groups")] {
        for kind in [Kind::Balint, Kind::BalintSealed, Kind::BalintRedis, Kind::BalintPair] {
            let Some((_, outcome)) =
                all.iter().find(|(s, _)| *s == scenario).and_then(|(_, r)| r.iter().find(|(k, _)| *k == kind))
            else {
                continue;
            };
            measured += 1;
            match outcome {
                Ok(o) if o.ratio() == 1.0 => {}
                Ok(o) => short.push(format!("{shape} {}: {}/{}", kind.name(), o.delivered, o.expected)),
                Err(_) => short.push(format!("{shape} {}: failed", kind.name())),
            }
        }
    }
    let figure = if short.is_empty() { format!("1 in all {measured} runs") } else { short.join("; ") };
    rows.push((
        target,
        figure,
        if measured == 0 { Verdict::Missing("no traffic scenario ran") } else { Verdict::of(short.is_empty()) },
    ));

    let mut t = String::new();
    let _ = writeln!(t, "### Summary: issue 16's targets (printed, not asserted)\n");
    let _ = writeln!(t, "| target | this run | status |");
    let _ = writeln!(t, "|---|---|---|");
    for (target, figure, verdict) in rows {
        let _ = writeln!(t, "| {target} | {} | {} |", figure.replace('|', "/"), verdict.text());
    }
    let _ = writeln!(
        t,
        "\nOne run's figures: a shared machine moves CPU figures from run to run by more than 10 % (see BENCHMARKS.md, Machine). Read a verdict near its threshold as undecided."
    );
    t
}
