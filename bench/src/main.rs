//! `balint-bench`: a load generator for Balint Room, run side by side against the bare relay
//! (`balint-relay`, the floor) and the peer servers, under the same generator in the same run.
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
    /// and many groups only), balint-room+redis, balint-room×2+redis, relay, y-websocket,
    /// y-sweet. Unavailable ones are reported and skipped.
    #[arg(
        long,
        default_value = "balint-room,balint-room sealed,balint-room+redis,relay,y-websocket,y-sweet",
        value_delimiter = ','
    )]
    targets: Vec<String>,
    /// Scenarios, comma-separated: group, many, late, idle.
    #[arg(long, default_value = "group,many,late,idle", value_delimiter = ',')]
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
    /// Idle: seconds measured once everyone is in.
    #[arg(long, default_value_t = 3.0)]
    idle_secs: f64,

    /// The balint-room binary.
    #[arg(long)]
    server: Option<PathBuf>,
    /// The balint-relay binary.
    #[arg(long)]
    relay: Option<PathBuf>,
    /// y-websocket's bin/server.js.
    #[arg(long)]
    y_websocket: Option<PathBuf>,
    /// Whether the relay sets TCP_NODELAY on its sockets (`false` shows what Nagle's algorithm
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
}

impl Scenario {
    fn parse(name: &str) -> anyhow::Result<Scenario> {
        Ok(match name {
            "group" => Scenario::Group,
            "many" => Scenario::Many,
            "late" => Scenario::Late,
            "idle" => Scenario::Idle,
            other => anyhow::bail!("unknown scenario {other}"),
        })
    }
    fn label(self) -> &'static str {
        match self {
            Scenario::Group => "group",
            Scenario::Many => "many",
            Scenario::Late => "late",
            Scenario::Idle => "idle",
        }
    }
}

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
        y_websocket: args
            .y_websocket
            .clone()
            .unwrap_or_else(|| root.join("bench/peers/node_modules/y-websocket/bin/server.js")),
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
        };
        eprintln!("== {title}");
        let mut results: Vec<(Kind, anyhow::Result<Outcome>)> = Vec::new();
        let traffic = matches!(scenario, Scenario::Group | Scenario::Many);
        for &kind in targets.iter().filter(|k| traffic || !k.traffic_only()) {
            eprintln!("   {} ...", kind.name());
            let outcome = run_one(kind, scenario, &programs, limits, &args, board_bytes).await;
            if let Err(e) = &outcome {
                eprintln!("   {} failed: {e:#}", kind.name());
            }
            results.push((kind, outcome));
        }
        let table = table(scenario, &title, &results);
        println!("{table}");
        report.push('\n');
        report.push_str(&table);
    }
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

fn table(scenario: Scenario, title: &str, results: &[(Kind, anyhow::Result<Outcome>)]) -> String {
    let complete = |o: &Outcome| o.ratio() == 1.0;
    // The figure each scenario ranks by, and the latency figure.
    let cost = |o: &Outcome| match scenario {
        Scenario::Idle => o.server_cpu / o.secs.max(1e-9) * 1e3,
        _ => o.cpu_per_delivery_us(),
    };
    let relay = results.iter().find(|(k, _)| *k == Kind::Relay).and_then(|(_, o)| o.as_ref().ok());
    let peers: Vec<&Outcome> =
        results.iter().filter(|(k, _)| k.is_peer()).filter_map(|(_, o)| o.as_ref().ok()).collect();
    let best_peer = |f: &dyn Fn(&Outcome) -> f64| {
        peers
            .iter()
            .filter(|o| scenario == Scenario::Idle || complete(o))
            .map(|o| f(o))
            .filter(|v| v.is_finite())
            .reduce(f64::min)
    };
    let relay_cost = relay.map(cost);
    let peer_cost = best_peer(&cost);
    let peer_p99 = best_peer(&|o: &Outcome| o.quantile_ms(0.99));
    let peer_rss = best_peer(&|o: &Outcome| o.rss_per_conn_kib());
    let relay_rss = relay.map(|o| o.rss_per_conn_kib());

    let mut t = String::new();
    let _ = writeln!(t, "### {title}\n");
    match scenario {
        Scenario::Group | Scenario::Many => {
            let _ = writeln!(t, "| target | conns | deliveries/s | p50 ms | p99 ms | max ms | server CPU µs/delivery | vs relay | vs best peer | p99 vs best peer | RSS MiB | RSS KiB/conn | delivered/expected | generator CPU s |");
            let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        }
        Scenario::Late => {
            let _ = writeln!(t, "| target | joins | board fill s | sync p50 ms | sync max ms | server CPU ms/join | vs relay | vs best peer | RSS MiB | full boards/joins | generator CPU s |");
            let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|");
        }
        Scenario::Idle => {
            let _ = writeln!(t, "| target | conns | connect s | RSS MiB | RSS KiB/conn | vs relay | vs best peer | idle server CPU ms/s | vs relay |");
            let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
        }
    }
    let mut problems = String::new();
    let mut notes = String::new();
    for (kind, outcome) in results {
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
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} = {} | {} |",
                    kind.name(),
                    o.connections,
                    fmt(o.delivered as f64 / o.secs, 0),
                    fmt(o.quantile_ms(0.5), 2),
                    fmt(o.quantile_ms(0.99), 2),
                    fmt(o.quantile_ms(1.0), 2),
                    fmt(o.cpu_per_delivery_us(), 2),
                    ratio(cost(o), relay_cost),
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
                    fmt(cost(o), 1),
                    ratio(cost(o), relay_cost),
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
