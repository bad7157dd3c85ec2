//! The node's keepalive clock: one timer for the keepalive of every connection, rather than
//! one each.
//!
//! A connection's keepalive runs once a beat (half the heartbeat interval: see
//! `connection.rs`). Connections are spread over [`SLOTS`] slots by their id; the clock
//! ticks every beat / [`SLOTS`] and wakes one slot a tick, so each connection is woken once a
//! beat, and a node's connections are woken a slot at a time, not all at once. A connection
//! holds a wait on a watch receiver of its slot (about two hundred bytes, no timer of its
//! own), kept from one turn of its loop to the next and polled only once the slot woke it (a
//! wake gate, `gate.rs`), so that a connection woken by its feed or socket takes no lock it shares
//! with the slot's other connections; a tick it was too busy to await is not lost, it is taken
//! as soon as the connection awaits again. A node with no connection does not tick.
//!
//! The clock also carries the server's shutdown: when the shutdown token is cancelled, every
//! slot ticks at once and [`Beat::stopping`] turns true, so a connection's loop waits on no
//! token of its own (a token's wait, made anew on every turn, registered with the token and
//! left it again each time: measurable on every delivery).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{ready, Poll};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, ReusableBoxFuture};

use crate::gate::Gate;
use crate::room::ConnId;

/// The slots a beat is divided into: with the 2.5 s beat, the clock ticks every 250 ms.
pub const SLOTS: usize = 10;

/// The node's clock. Cheap to clone; its task ends when the clock and every [`Beat`] are gone.
#[derive(Clone)]
pub struct KeepaliveClock {
    slots: Arc<Slots>,
}

struct Slots {
    beat: Duration,
    slots: Box<[watch::Sender<()>]>,
    /// Set when the server shuts down; every slot ticks then, so that each connection sees it
    /// at once.
    stopping: AtomicBool,
    /// Wakes the clock's task when it waits for a connection: for a new one, or when the
    /// clock goes.
    wake: Arc<Notify>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// One connection's share of the clock: [`Beat::tick`] returns once a beat.
pub struct Beat {
    /// The wait for the slot's next tick. It outlives each `tick()` call, so that a connection
    /// registers with its slot once per tick, not on every turn of its loop.
    tick: ReusableBoxFuture<'static, watch::Receiver<()>>,
    /// `tick` is polled only once its slot woke it (and before its first poll), so a
    /// connection woken by its feed or its socket does not take the slot's lock, which the
    /// slot's other connections share.
    gate: Gate,
    /// Keeps the slots, so that `tick` never finds its sender gone.
    clock: Arc<Slots>,
}

impl KeepaliveClock {
    /// Starts the clock (its task) with the connections' beat. When `shutdown` is cancelled,
    /// every connection is woken and told (see [`Beat::stopping`]). Needs a tokio runtime.
    pub fn start(beat: Duration, shutdown: CancellationToken) -> Self {
        let slots = Arc::new(Slots {
            beat,
            slots: (0..SLOTS).map(|_| watch::channel(()).0).collect(),
            stopping: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
        });
        tokio::spawn(run(Arc::downgrade(&slots), slots.wake.clone(), shutdown));
        KeepaliveClock { slots }
    }

    /// The beat of connection `conn`.
    pub fn beat(&self, conn: ConnId) -> Beat {
        // `ConnId`s count up: consecutive connections fall in consecutive slots.
        let slot = (conn.0 % SLOTS as u64) as usize;
        let tick = self.slots.slots[slot].subscribe();
        self.slots.wake.notify_one();
        Beat { tick: ReusableBoxFuture::new(changed(tick)), gate: Gate::new(), clock: self.slots.clone() }
    }
}

impl Beat {
    /// Waits for the connection's next tick (at most a beat, as the slot's last tick is
    /// consumed when it is missed).
    /// Cancel-safe: a wait dropped before the tick keeps its place for the next call.
    pub async fn tick(&mut self) {
        std::future::poll_fn(|cx| {
            let Beat { tick, gate, .. } = self;
            let receiver = ready!(gate.poll(cx, |cx| tick.poll(cx)));
            // The next wait is polled at the next call (the gate lets it through after a
            // ready poll), to register with the slot.
            tick.set(changed(receiver));
            Poll::Ready(())
        })
        .await;
    }

    /// Whether the server is shutting down: the connection ends. [`Beat::tick`] returns once
    /// when it starts to; a connection checks this after each tick, and before it waits.
    pub fn stopping(&self) -> bool {
        self.clock.stopping.load(Ordering::Acquire)
    }

    /// How often [`Beat::tick`] returns.
    pub fn period(&self) -> Duration {
        self.clock.beat
    }
}

/// Returns `receiver` once its slot has ticked. The sender lives in the [`Beat`]'s clock: it
/// cannot be gone.
async fn changed(mut receiver: watch::Receiver<()>) -> watch::Receiver<()> {
    let _ = receiver.changed().await;
    receiver
}

/// Ticks every beat / [`SLOTS`], waking one slot a tick, while any connection listens; ends
/// when nobody holds the clock. When `shutdown` is cancelled, ticks every slot at once.
async fn run(slots: Weak<Slots>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let Some(period) = slots.upgrade().map(|s| (s.beat / SLOTS as u32).max(Duration::from_millis(1))) else {
        return;
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stopped = false;
    let stop = |stopped: &mut bool| {
        *stopped = true;
        if let Some(clock) = slots.upgrade() {
            clock.stopping.store(true, Ordering::Release);
            for slot in clock.slots.iter() {
                slot.send_replace(());
            }
        }
    };
    for slot in (0..SLOTS).cycle() {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled(), if !stopped => {
                stop(&mut stopped);
                continue;
            }
        }
        let Some(clock) = slots.upgrade() else { return };
        clock.slots[slot].send_replace(());
        let listened = clock.slots.iter().any(|s| s.receiver_count() > 0);
        drop(clock);
        if !listened {
            // Nobody listens: wait for a connection (or the clock's end) rather than tick for
            // none. A connection that came meanwhile left a permit: none is missed.
            tokio::select! {
                () = wake.notified() => {}
                () = shutdown.cancelled(), if !stopped => stop(&mut stopped),
            }
            ticks.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_connection_is_woken_once_a_beat_a_slot_at_a_time() {
        let beat = Duration::from_millis(2500);
        let clock = KeepaliveClock::start(beat, CancellationToken::new());
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..2 * SLOTS as u64)
            .map(|id| {
                let mut b = clock.beat(ConnId(id));
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    for _ in 0..3 {
                        b.tick().await;
                        times.push(start.elapsed());
                    }
                    times
                })
            })
            .collect();
        let mut woken = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            woken.push((i, task.await.unwrap()));
        }
        // Paused time runs on only when every task waits, so each wait above ends at a tick.
        for (i, times) in &woken {
            assert!(times[0] <= beat, "connection {i}: first tick at {:?}", times[0]);
            assert_eq!(times[1].saturating_sub(times[0]), beat, "connection {i}: {times:?}");
            assert_eq!(times[2].saturating_sub(times[1]), beat, "connection {i}: {times:?}");
        }
        // Connections one slot apart are woken a tenth of a beat apart.
        assert_eq!(woken[1].1[2].saturating_sub(woken[0].1[2]), beat / SLOTS as u32);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_wakes_every_connection_at_once() {
        let shutdown = CancellationToken::new();
        let clock = KeepaliveClock::start(Duration::from_millis(2500), shutdown.clone());
        let beats: Vec<_> = (0..SLOTS as u64).map(|id| clock.beat(ConnId(id))).collect();
        // Past the first tick of a slot or two: each waits for its next one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tasks: Vec<_> = beats
            .into_iter()
            .map(|mut beat| {
                tokio::spawn(async move {
                    let start = tokio::time::Instant::now();
                    loop {
                        beat.tick().await;
                        if beat.stopping() {
                            return start.elapsed();
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(!clock.beat(ConnId(99)).stopping());
        shutdown.cancel();
        for task in tasks {
            let waited = task.await.unwrap();
            assert_eq!(waited, Duration::from_millis(1000), "woken as the shutdown came, not at a tick");
        }
        // A connection that comes after the shutdown is told before it waits.
        assert!(clock.beat(ConnId(100)).stopping());
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_tick_is_taken_at_once() {
        let clock = KeepaliveClock::start(Duration::from_millis(2500), CancellationToken::new());
        let mut beat = clock.beat(ConnId(3));
        // The connection is busy for two beats: its tick is there when it next waits.
        tokio::time::sleep(Duration::from_millis(5000)).await;
        let before = tokio::time::Instant::now();
        beat.tick().await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_stops_when_nobody_holds_it() {
        let clock = KeepaliveClock::start(Duration::from_millis(2500), CancellationToken::new());
        let slots = Arc::downgrade(&clock.slots);
        let beat = clock.beat(ConnId(1));
        drop(clock);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(slots.upgrade().is_some(), "a connection still listens");
        drop(beat);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(slots.upgrade().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_that_waited_for_connections_ticks_for_the_next() {
        let clock = KeepaliveClock::start(Duration::from_millis(2500), CancellationToken::new());
        let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
        assert_eq!(tasks(), 1, "the clock's task");
        // Nobody listens: the clock's task stops ticking, and waits for a connection.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for conn in [4, 5] {
            let mut beat = clock.beat(ConnId(conn));
            let ticked = tokio::time::timeout(Duration::from_millis(2501), beat.tick()).await;
            assert!(ticked.is_ok(), "connection {conn} is woken within a beat");
            drop(beat);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        drop(clock);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(tasks(), 0, "the clock's task ended with the clock");
    }
}
