//! The node's keepalive clock: one timer for the keepalive of every connection, rather than
//! one each.
//!
//! A connection's keepalive runs on its beats, at most once a beat (a quarter of the heartbeat
//! interval: see `connection.rs`), and only on the beats at which something may be due: a
//! connection tells its [`Beat`] how many beats it may rest ([`Beat::rest`]) before it next
//! has to ping, send a heartbeat or check for a stall, and is not woken before then. A quiet
//! web page, which needs a heartbeat every few seconds, wakes every third beat; a quiet stock
//! client, which only needs a ping now and then, every seventh.
//!
//! Connections are spread over [`SLOTS`] slots by their id; the clock ticks every beat /
//! [`SLOTS`] and ticks one slot a tick, so each slot ticks once a beat and a node's
//! connections are woken a slot at a time, not all at once. Each slot counts its ticks
//! (rounds) and keeps the waits registered with it, each for a round: a tick wakes the waits
//! whose round has come and leaves the others alone. A wait is registered once per rest, from
//! the connection's own task, and polled only once the slot woke it (a wake gate, `gate.rs`),
//! so a connection woken by its outlet or socket takes no lock it shares with the slot's other
//! connections. A round the connection was too busy to await is not lost: it is taken as soon
//! as the connection awaits again. A node with no connection does not tick.
//!
//! The clock also carries the server's shutdown: when the shutdown token is cancelled, every
//! waiting connection is woken at once and [`Beat::stopping`] turns true, so a connection's
//! loop waits on no token of its own (a token's wait, made anew on every turn, registered with
//! the token and left it again each time: measurable on every delivery).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::gate::Gate;
use crate::room::ConnId;

/// The slots a beat is divided into: with the 1.25 s beat, the clock ticks every 125 ms.
pub const SLOTS: usize = 10;

/// The node's clock. Cheap to clone; its task ends when the clock and every [`Beat`] are gone.
#[derive(Clone)]
pub struct KeepaliveClock {
    slots: Arc<Slots>,
}

struct Slots {
    beat: Duration,
    slots: Box<[Slot]>,
    /// Set when the server shuts down; every waiting connection is woken then.
    stopping: AtomicBool,
    /// The [`Beat`]s alive: the clock ticks only while there is one.
    beats: AtomicUsize,
    /// Wakes the clock's task when it waits for a connection: for a new one, or when the
    /// clock goes.
    wake: Arc<Notify>,
}

/// One slot: its rounds, and the waits registered with it.
#[derive(Default)]
struct Slot {
    /// How many times the slot has ticked. Raised under `waiting`'s lock, so that a wait
    /// registered for the next round is either seen by the tick or sees the round.
    round: AtomicU64,
    waiting: Mutex<Vec<Waiting>>,
}

/// A connection waiting for `round` of its slot.
struct Waiting {
    round: u64,
    conn: ConnId,
    waker: Waker,
}

impl Slot {
    fn waiting(&self) -> MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ticks: the next round, and wakes the waits that were for it (or any before it).
    fn tick(&self) {
        let mut due = Vec::new();
        {
            let mut waiting = self.waiting();
            let round = self.round.fetch_add(1, Ordering::AcqRel) + 1;
            // (`Vec::extract_if` is newer than the workspace's `rust-version`.)
            let mut i = 0;
            while i < waiting.len() {
                if waiting[i].round <= round {
                    due.push(waiting.swap_remove(i).waker);
                } else {
                    i += 1;
                }
            }
        }
        // Woken outside the lock: a waker may take its task's.
        due.into_iter().for_each(Waker::wake);
    }

    /// Wakes every wait, whatever its round.
    fn wake_all(&self) {
        let due = std::mem::take(&mut *self.waiting());
        due.into_iter().for_each(|w| w.waker.wake());
    }
}

/// The slot of connection `conn`. `ConnId`s count up: consecutive connections fall in
/// consecutive slots.
fn slot_of(conn: ConnId) -> usize {
    (conn.0 % SLOTS as u64) as usize
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// One connection's share of the clock: [`Beat::tick`] returns at the connection's next beat,
/// the next one of its slot unless it was told to rest longer ([`Beat::rest`]).
pub struct Beat {
    conn: ConnId,
    /// The round of its slot the connection waits for.
    due: u64,
    /// The round of the wait registered with the slot, 0 if none is (it is removed when the
    /// slot reaches it; rounds waited for start at 1).
    registered: u64,
    /// Whether a wait for a later round was left registered ([`Beat::wake_at_next`]).
    left_behind: bool,
    /// The slot is looked at only once it woke the connection (and before the first look), so
    /// a connection woken by its outlet or its socket does not take the slot's lock.
    gate: Gate,
    clock: Arc<Slots>,
}

impl KeepaliveClock {
    /// Starts the clock (its task) with the connections' beat. When `shutdown` is cancelled,
    /// every connection is woken and told (see [`Beat::stopping`]). Needs a tokio runtime.
    pub fn start(beat: Duration, shutdown: CancellationToken) -> Self {
        let slots = Arc::new(Slots {
            beat,
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            stopping: AtomicBool::new(false),
            beats: AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
        });
        tokio::spawn(run(Arc::downgrade(&slots), slots.wake.clone(), shutdown));
        KeepaliveClock { slots }
    }

    /// The beat of connection `conn`: its first tick is its slot's next.
    pub fn beat(&self, conn: ConnId) -> Beat {
        let slot = slot_of(conn);
        self.slots.beats.fetch_add(1, Ordering::AcqRel);
        self.slots.wake.notify_one();
        let next = self.slots.slots[slot].round.load(Ordering::Acquire) + 1;
        Beat { conn, due: next, registered: 0, left_behind: false, gate: Gate::new(), clock: self.slots.clone() }
    }
}

impl Beat {
    /// Waits for the connection's next beat: at once if its round has passed while the
    /// connection was busy. After it, the next is the slot's next tick, unless [`Beat::rest`]
    /// says otherwise.
    /// Cancel-safe: a wait dropped before its beat keeps its place for the next call.
    pub async fn tick(&mut self) {
        std::future::poll_fn(|cx| {
            let Beat { conn, due, registered, gate, clock, .. } = self;
            let slot = &clock.slots[slot_of(*conn)];
            let ready = gate.poll(cx, |cx| {
                if clock.stopping.load(Ordering::Acquire) || slot.round.load(Ordering::Acquire) >= *due {
                    return Poll::Ready(());
                }
                if *registered != *due {
                    let mut waiting = slot.waiting();
                    // Read again under the lock a tick raises it under: no tick slips between.
                    if slot.round.load(Ordering::Acquire) >= *due {
                        return Poll::Ready(());
                    }
                    waiting.push(Waiting { round: *due, conn: *conn, waker: cx.waker().clone() });
                    *registered = *due;
                }
                Poll::Pending
            });
            if ready.is_ready() {
                if *registered <= *due {
                    // Reached, so removed by the tick (or about to be, a spurious wake-up).
                    *registered = 0;
                }
                *due = slot.round.load(Ordering::Acquire) + 1;
            }
            ready
        })
        .await;
    }

    /// Lets the connection rest: its next beat is `beats` beats after the one it just had
    /// (at least one). Called once right after [`Beat::tick`] returned, with how long nothing
    /// can be due.
    pub fn rest(&mut self, beats: u64) {
        // `due` is the round after the one just reached.
        self.due = self.due - 1 + beats.max(1);
    }

    /// Makes the connection's next beat its slot's next tick, if it was resting longer
    /// (something became due sooner).
    pub fn wake_at_next(&mut self) {
        let next = self.clock.slots[slot_of(self.conn)].round.load(Ordering::Acquire) + 1;
        if next < self.due {
            self.due = next;
            self.left_behind |= self.registered != 0;
            // The wait registered for the later round stays: it wakes the connection once
            // more, which then finds nothing due.
            self.gate.open();
        }
    }

    /// Whether the server is shutting down: the connection ends. [`Beat::tick`] returns once
    /// when it starts to; a connection checks this after each tick, and before it waits.
    pub fn stopping(&self) -> bool {
        self.clock.stopping.load(Ordering::Acquire)
    }

    /// The time between two ticks of the connection's slot.
    pub fn period(&self) -> Duration {
        self.clock.beat
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        if self.registered != 0 || self.left_behind {
            // Its wait would wake a connection that is gone, and hold its task until then.
            let conn = self.conn;
            self.clock.slots[slot_of(conn)].waiting().retain(|w| w.conn != conn);
        }
        self.clock.beats.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ticks every beat / [`SLOTS`], one slot a tick, while any connection listens; ends when
/// nobody holds the clock. When `shutdown` is cancelled, wakes every connection at once.
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
            clock.slots.iter().for_each(Slot::wake_all);
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
        clock.slots[slot].tick();
        if clock.stopping.load(Ordering::Acquire) {
            // A connection that registered after the shutdown's wake-up is woken here.
            clock.slots.iter().for_each(Slot::wake_all);
        }
        let listened = clock.beats.load(Ordering::Acquire) > 0;
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
    async fn a_resting_connection_is_woken_only_when_its_rest_is_over() {
        let beat = Duration::from_millis(1250);
        let clock = KeepaliveClock::start(beat, CancellationToken::new());
        // Two connections of one slot: one rests four beats after each tick, one does not.
        let (mut resting, mut busy) = (clock.beat(ConnId(1)), clock.beat(ConnId(1 + SLOTS as u64)));
        let start = tokio::time::Instant::now();
        let resting = tokio::spawn(async move {
            let mut times = Vec::new();
            for _ in 0..3 {
                resting.tick().await;
                times.push(start.elapsed());
                resting.rest(4);
            }
            times
        });
        let busy = tokio::spawn(async move {
            let mut times = Vec::new();
            for _ in 0..9 {
                busy.tick().await;
                times.push(start.elapsed());
            }
            times
        });
        let (resting, busy) = (resting.await.unwrap(), busy.await.unwrap());
        assert!(resting[0] <= beat);
        assert_eq!(resting[1] - resting[0], beat * 4, "{resting:?}");
        assert_eq!(resting[2] - resting[1], beat * 4, "{resting:?}");
        // The slot's other connection still has every beat.
        assert!(busy.windows(2).all(|w| w[1] - w[0] == beat), "{busy:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rest_is_cut_short_when_something_comes_due() {
        let beat = Duration::from_millis(1250);
        let clock = KeepaliveClock::start(beat, CancellationToken::new());
        let mut b = clock.beat(ConnId(2));
        b.tick().await;
        let start = tokio::time::Instant::now();
        b.rest(7);
        // Waiting for the seventh beat (polled, so registered with the slot for it).
        assert!(tokio::time::timeout(beat * 5 / 2, b.tick()).await.is_err());
        b.wake_at_next();
        b.tick().await;
        assert_eq!(start.elapsed(), beat * 3, "the next tick of the slot after the change");
        // The wait for the seventh beat is still registered: it wakes the connection once
        // more, which then waits on; it is gone when the connection goes.
        assert_eq!(clock.slots.slots[2].waiting().len(), 1);
        drop(b);
        assert!(clock.slots.slots[2].waiting().is_empty(), "a closed connection leaves no wait behind");
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
