//! The scenarios. Each runs against one freshly started server and returns what it measured.
//!
//! Every load loop is bounded: a member sends a fixed number of edits, every wait has a
//! deadline, and the connection fan-in is limited by a semaphore.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{join, Member, Shared};
use crate::target::{cpu_secs, cpu_secs_of, redis_commands, rss_kib_of, Running};

/// Connections opened at once while a scenario sets up.
const CONNECT_CONCURRENCY: usize = 64;
/// How long a member may take to join and sync.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long, after the last edit was sent, deliveries may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What a scenario measured on one target.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Connections held during the measurement.
    pub connections: usize,
    /// Deliveries that should have happened.
    pub expected: u64,
    /// Deliveries that did happen.
    pub delivered: u64,
    /// Length of the measured window, in seconds.
    pub secs: f64,
    /// Latencies in µs (fan-out latency, or time to full sync for a late joiner).
    pub latencies_us: Vec<u32>,
    /// Server CPU (user + system) used during the window, in seconds.
    pub server_cpu: f64,
    /// The generator's own CPU during the window, in seconds.
    pub bench_cpu: f64,
    /// Server RSS before any connection, KiB.
    pub rss_base_kib: u64,
    /// Server RSS at the end of the window, connections still open, KiB.
    pub rss_kib: u64,
    /// Seconds it took to set up (connect and sync everyone, or fill the board).
    pub setup_secs: f64,
    /// What went wrong.
    pub problems: Vec<String>,
    /// Commands Redis processed during the measured window, for a target that uses Redis.
    pub redis_commands: Option<u64>,
    /// Rooms set up ahead: the server's CPU per second (s/s) over a window as long as the
    /// measured one, before any room was created.
    pub empty_cpu_per_s: f64,
}

impl Outcome {
    /// Delivered over expected.
    pub fn ratio(&self) -> f64 {
        if self.expected == 0 {
            f64::NAN
        } else {
            self.delivered as f64 / self.expected as f64
        }
    }

    /// The `q` quantile of the latencies, in ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[i] as f64 / 1000.0
    }

    /// Server CPU per delivery, µs.
    pub fn cpu_per_delivery_us(&self) -> f64 {
        if self.delivered == 0 {
            f64::NAN
        } else {
            self.server_cpu * 1e6 / self.delivered as f64
        }
    }

    /// RSS per connection above the idle server, KiB.
    pub fn rss_per_conn_kib(&self) -> f64 {
        if self.connections == 0 {
            f64::NAN
        } else {
            self.rss_kib.saturating_sub(self.rss_base_kib) as f64 / self.connections as f64
        }
    }
}

fn my_cpu() -> f64 {
    cpu_secs(std::process::id())
}

/// Rooms of `members` members, each member editing `notes` at `hz` for `secs` seconds.
pub async fn traffic(
    server: &mut Running,
    rooms: usize,
    members: usize,
    hz: f64,
    secs: f64,
) -> anyhow::Result<Outcome> {
    let pids = server.pids();
    let total = rooms * members;
    let edits = (hz * secs).round().max(1.0) as u32;
    let period = Duration::from_secs_f64(1.0 / hz);
    let shared = Shared::new(total);
    let mut out = Outcome { connections: total, rss_base_kib: rss_kib_of(&pids), ..Outcome::default() };
    let setup = Instant::now();

    let mut links = Vec::with_capacity(rooms);
    for _ in 0..rooms {
        links.push(server.room().await.context("creating a room")?);
    }
    let (go_tx, go_rx) = watch::channel(None::<tokio::time::Instant>);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (r, link) in links.iter().enumerate() {
        for m in 0..members {
            let id = (r * members + m + 1) as u64;
            let url = link.url(&format!("m{id}"));
            let (hello, sealed, address) = (link.hello, link.sealed.clone(), link.address.clone());
            let (shared, ready, gate) = (shared.clone(), ready.clone(), gate.clone());
            let (mut go, mut stop) = (go_rx.clone(), stop_rx.clone());
            tasks.spawn(async move {
                let permit = gate.acquire_owned().await?;
                let (mut member, mut stream) = join(&url, hello, sealed, address.as_deref(), id, shared, JOIN_TIMEOUT).await?;
                drop(permit);
                ready.fetch_add(1, Ordering::Relaxed);
                let mut ticker: Option<tokio::time::Interval> = None;
                loop {
                    tokio::select! {
                        frame = stream.next() => {
                            if !member.handle(frame).await? {
                                bail!("member {id}: the server closed the connection");
                            }
                        }
                        changed = go.changed(), if ticker.is_none() => {
                            changed?;
                            let start = *go.borrow();
                            if let Some(start) = start {
                                // Members start at random points of the first period, as people do.
                                let offset = period.mul_f64(rand::thread_rng().gen::<f64>());
                                let mut t = tokio::time::interval_at(start + offset, period);
                                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                                ticker = Some(t);
                            }
                        }
                        _ = async { ticker.as_mut().expect("ticker").tick().await }, if ticker.is_some() && member.sent < edits => {
                            member.edit().await?;
                        }
                        _ = stop.changed() => break,
                    }
                }
                let latencies = std::mem::take(&mut member.latencies);
                member.close().await;
                anyhow::Ok(latencies)
            });
        }
    }
    // Everyone joined and synced?
    let deadline = Instant::now() + JOIN_TIMEOUT * 2;
    while ready.load(Ordering::Relaxed) < total {
        if Instant::now() > deadline || tasks.try_join_next().is_some_and(|r| !matches!(r, Ok(Ok(_)))) {
            let _ = stop_tx.send(true);
            bail!("only {} of {total} members joined", ready.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.setup_secs = setup.elapsed().as_secs_f64();
    // Let the joins settle (state snapshots, awareness) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    out.expected = (rooms * members * (members - 1)) as u64 * edits as u64;
    let total_edits = (total as u64) * edits as u64;
    let (cpu0, bench0) = (cpu_secs_of(&pids), my_cpu());
    let redis0 = server.redis.as_deref().and_then(redis_commands);
    let start = tokio::time::Instant::now();
    go_tx.send(Some(start))?;
    let send_deadline = Instant::now() + Duration::from_secs_f64(secs * 3.0 + 10.0);
    while shared.edits.load(Ordering::Relaxed) < total_edits && Instant::now() < send_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while shared.delivered.load(Ordering::Relaxed) < out.expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out.secs = start.elapsed().as_secs_f64();
    out.server_cpu = cpu_secs_of(&pids) - cpu0;
    out.redis_commands = redis0.zip(server.redis.as_deref().and_then(redis_commands)).map(|(a, b)| b.saturating_sub(a));
    out.bench_cpu = my_cpu() - bench0;
    out.rss_kib = rss_kib_of(&pids);
    // A straggler delivery or duplicate would show here.
    tokio::time::sleep(Duration::from_millis(200)).await;
    out.delivered = shared.delivered.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(latencies)) => out.latencies_us.extend(latencies),
            Ok(Err(e)) => shared.problem(format!("{e:#}")),
            Err(e) => shared.problem(format!("task: {e}")),
        }
    }
    out.problems = shared.problems.lock().expect("problems lock").clone();
    Ok(out)
}

/// A board of `board_bytes` characters, written by one member in updates of `chunk` characters;
/// then `joins` newcomers, one after the other, each timed from connecting to holding the whole
/// board.
pub async fn late_joiner(
    server: &mut Running,
    board_bytes: usize,
    chunk: usize,
    joins: usize,
) -> anyhow::Result<Outcome> {
    let pids = server.pids();
    let shared = Shared::new(0);
    let link = server.room().await?;
    let mut out =
        Outcome { connections: 1, rss_base_kib: rss_kib_of(&pids), expected: joins as u64, ..Outcome::default() };
    let setup = Instant::now();
    let (mut writer, mut writer_stream) = join(
        &link.url("writer"),
        link.hello,
        link.sealed.clone(),
        link.address.as_deref(),
        1,
        shared.clone(),
        JOIN_TIMEOUT,
    )
    .await?;
    let (stop_tx, mut stop) = watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let chunks = board_bytes.div_ceil(chunk);
    let last = board_bytes - chunk * (chunks - 1);
    let writer_task = tokio::spawn(async move {
        let mut uploaded = 0;
        let mut flushed_at: Option<u32> = None;
        let mut ready_tx = Some(ready_tx);
        loop {
            tokio::select! {
                frame = writer_stream.next() => {
                    if !writer.handle(frame).await? {
                        bail!("the server closed the writer's connection");
                    }
                    if flushed_at.is_some_and(|n| writer.step2s > n) {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                _ = std::future::ready(()), if uploaded < chunks => {
                    writer.upload_chunk(if uploaded + 1 == chunks { last } else { chunk }).await?;
                    uploaded += 1;
                    if uploaded == chunks {
                        // The server answers in order: its step 2 comes after it applied everything.
                        flushed_at = Some(writer.step2s);
                        writer.send_step1().await?;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        writer.close().await;
        anyhow::Ok(())
    });
    tokio::time::timeout(Duration::from_secs(300), ready_rx).await.context("filling the board took too long")??;
    out.setup_secs = setup.elapsed().as_secs_f64();
    let target_len = board_bytes as u32;
    // The server is otherwise quiet between joins: its CPU is read once around all of them.
    let (cpu0, bench0) = (cpu_secs_of(&pids), my_cpu());
    let redis0 = server.redis.as_deref().and_then(redis_commands);
    for j in 0..joins {
        let t0 = Instant::now();
        let url = link.url(&format!("late{j}"));
        let (mut joiner, mut stream) = Member::connect(
            &url,
            link.hello,
            link.sealed.clone(),
            link.address.as_deref(),
            1000 + j as u64,
            shared.clone(),
        )
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while joiner.notes_len() < target_len {
            let frame = tokio::time::timeout_at(deadline, stream.next())
                .await
                .context("late joiner did not get the board in time")?;
            if !joiner.handle(frame).await? {
                bail!("the server closed the late joiner's connection");
            }
        }
        let took = t0.elapsed();
        out.secs += took.as_secs_f64();
        out.latencies_us.push(took.as_micros().min(u32::MAX as u128) as u32);
        if joiner.notes_len() == target_len {
            out.delivered += 1;
        }
        out.rss_kib = out.rss_kib.max(rss_kib_of(&pids));
        joiner.close().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.server_cpu = cpu_secs_of(&pids) - cpu0;
    out.redis_commands = redis0.zip(server.redis.as_deref().and_then(redis_commands)).map(|(a, b)| b.saturating_sub(a));
    out.bench_cpu = my_cpu() - bench0;
    let _ = stop_tx.send(true);
    match writer_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.problem(format!("{e:#}")),
        Err(e) => shared.problem(format!("writer: {e}")),
    }
    out.problems = shared.problems.lock().expect("problems lock").clone();
    Ok(out)
}

/// `count` members in rooms of `room_size`, connected and synced, doing nothing for `secs`.
pub async fn idle(server: &mut Running, count: usize, room_size: usize, secs: f64) -> anyhow::Result<Outcome> {
    let pids = server.pids();
    let shared = Shared::new(0);
    let mut out = Outcome { connections: count, rss_base_kib: rss_kib_of(&pids), ..Outcome::default() };
    let setup = Instant::now();
    let rooms = count.div_ceil(room_size.max(1));
    let mut links = Vec::with_capacity(rooms);
    for _ in 0..rooms {
        links.push(server.room().await.context("creating a room")?);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let link = links[i / room_size.max(1)].clone();
        let (shared, ready, gate, mut stop) = (shared.clone(), ready.clone(), gate.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await?;
            let (mut member, mut stream) = join(
                &link.url(&format!("i{i}")),
                link.hello,
                link.sealed.clone(),
                link.address.as_deref(),
                i as u64 + 1,
                shared,
                JOIN_TIMEOUT,
            )
            .await?;
            drop(permit);
            ready.fetch_add(1, Ordering::Relaxed);
            loop {
                tokio::select! {
                    frame = stream.next() => {
                        if !member.handle(frame).await? {
                            bail!("member {i}: the server closed the connection");
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
            member.close().await;
            anyhow::Ok(())
        });
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline || tasks.try_join_next().is_some_and(|r| !matches!(r, Ok(Ok(_)))) {
            let _ = stop_tx.send(true);
            bail!("only {} of {count} idle members joined", ready.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.setup_secs = setup.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Nanoseconds: an idle server may run for less than a millisecond in the window.
    let (cpu0, bench0) = (cpu_secs_of(&pids), my_cpu());
    let redis0 = server.redis.as_deref().and_then(redis_commands);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    out.secs = t0.elapsed().as_secs_f64();
    out.server_cpu = cpu_secs_of(&pids) - cpu0;
    out.redis_commands = redis0.zip(server.redis.as_deref().and_then(redis_commands)).map(|(a, b)| b.saturating_sub(a));
    out.bench_cpu = my_cpu() - bench0;
    out.rss_kib = rss_kib_of(&pids);
    let _ = stop_tx.send(true);
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.problem(format!("{e:#}")),
            Err(e) => shared.problem(format!("task: {e}")),
        }
    }
    out.problems = shared.problems.lock().expect("problems lock").clone();
    Ok(out)
}

/// Rooms set up ahead: `rooms` rooms (documents) created and nobody joined. The server's idle
/// CPU is read over `secs` before the first room is created and again, over `secs`, once they
/// all exist; RSS before and after. Only for servers that create rooms ahead
/// ([`crate::target::Kind::creates_rooms`]).
pub async fn ahead(server: &mut Running, rooms: usize, secs: f64) -> anyhow::Result<Outcome> {
    let pids = server.pids();
    let window = Duration::from_secs_f64(secs);
    let (cpu0, t0) = (cpu_secs_of(&pids), Instant::now());
    tokio::time::sleep(window).await;
    let empty_cpu_per_s = (cpu_secs_of(&pids) - cpu0) / t0.elapsed().as_secs_f64();
    let mut out = Outcome { connections: rooms, empty_cpu_per_s, ..Outcome::default() };
    out.rss_base_kib = rss_kib_of(&pids);
    let setup = Instant::now();
    for _ in 0..rooms {
        tokio::time::timeout(Duration::from_secs(10), server.room())
            .await
            .context("creating a room took over 10 s")?
            .context("creating a room")?;
    }
    out.setup_secs = setup.elapsed().as_secs_f64();
    // Let whatever a creation leaves behind (a write, a first timer) settle before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let redis0 = server.redis.as_deref().and_then(redis_commands);
    let (cpu0, bench0) = (cpu_secs_of(&pids), my_cpu());
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    out.secs = t0.elapsed().as_secs_f64();
    out.server_cpu = cpu_secs_of(&pids) - cpu0;
    out.bench_cpu = my_cpu() - bench0;
    out.redis_commands = redis0.zip(server.redis.as_deref().and_then(redis_commands)).map(|(a, b)| b.saturating_sub(a));
    out.rss_kib = rss_kib_of(&pids);
    Ok(out)
}
