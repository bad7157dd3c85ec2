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
//! Connections are spread over [`SLOTS`] slots by their id, and the slots' beats are spread
//! over the beat: slot `s`'s round `r` (its `r`-th beat) comes at `start + spacing × (s + 1) +
//! beat × (r − 1)`, with `spacing` a tenth of the beat, so a node's connections are woken a slot
//! at a time, not all at once. Rounds are read from the time, so the clock's task wakes only
//! when a wait is due: each slot keeps the waits registered with it, each for a round, and the
//! earliest round any slot waits for; the task sleeps until the earliest of those, wakes the
//! waits whose round has come and leaves the others alone. A node whose connections all rest
//! (or that has none) wakes for nothing in between: where the clock used to tick ten times a
//! beat, it now wakes as often as its connections' keepalives are due, at most ten times a beat.
//!
//! A wait is registered once per rest, from the connection's own task, and polled only once
//! the slot woke it (a wake gate, `gate.rs`), so a connection woken by its outlet or socket
//! takes no lock it shares with the slot's other connections. A round the connection was too
//! busy to await is not lost: it is taken as soon as the connection awaits again.
//!
//! The clock also carries the server's shutdown: when the shutdown token is cancelled, every
//! waiting connection is woken at once and [`Beat::stopping`] turns true, so a connection's
//! loop waits on no token of its own (a token's wait, made anew on every turn, registered with
//! the token and left it again each time: measurable on every delivery).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::gate::Gate;
use crate::room::ConnId;

/// The slots a beat is divided into: with the 1.25 s beat, slots' beats are 125 ms apart.
pub const SLOTS: usize = 10;

/// No wait registered: [`Slots::next`] and [`Waits::earliest`] then.
const NONE: u64 = u64::MAX;

/// The node's clock. Cheap to clone; its task ends when the clock and every [`Beat`] are gone.
#[derive(Clone)]
pub struct KeepaliveClock {
    slots: Arc<Slots>,
}

struct Slots {
    beat: Duration,
    /// The time between two slots' beats: a tenth of the beat.
    spacing: Duration,
    /// Where the rounds are counted from.
    start: Instant,
    slots: Box<[Slot]>,
    /// Set when the server shuts down; every waiting connection is woken then.
    stopping: AtomicBool,
    /// When the earliest registered wait is due (nanoseconds after `start`), [`NONE`] if
    /// no wait is registered: the clock's task sleeps until then.
    next: AtomicU64,
    /// Wakes the clock's task when a wait is registered for earlier than it sleeps until, or
    /// when the clock goes.
    wake: Arc<Notify>,
    /// How many times the clock's task woke to wake connections.
    #[cfg(test)]
    wakes: AtomicU64,
}

/// One slot: the waits registered with it.
#[derive(Default)]
struct Slot {
    waits: Mutex<Waits>,
}

#[derive(Default)]
struct Waits {
    waiting: Vec<Waiting>,
    /// The earliest round in `waiting`, or lower ([`NONE`] if it is empty): a wait removed
    /// early leaves it lower, which costs the clock one look at the slot.
    earliest: u64,
}

/// A connection waiting for `round` of its slot.
struct Waiting {
    round: u64,
    conn: ConnId,
    waker: Waker,
}

impl Slot {
    fn waits(&self) -> MutexGuard<'_, Waits> {
        self.waits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waits for `round` or any before it; returns the earliest round still waited
    /// for, if any.
    fn wake_until(&self, round: u64) -> Option<u64> {
        let mut due = Vec::new();
        let earliest = {
            let mut waits = self.waits();
            if waits.earliest > round {
                return (waits.earliest != NONE).then_some(waits.earliest);
            }
            let mut earliest = NONE;
            // (`Vec::extract_if` is newer than the workspace's `rust-version`.)
            let mut i = 0;
            while i < waits.waiting.len() {
                if waits.waiting[i].round <= round {
                    due.push(waits.waiting.swap_remove(i).waker);
                } else {
                    earliest = earliest.min(waits.waiting[i].round);
                    i += 1;
                }
            }
            waits.earliest = earliest;
            earliest
        };
        // Woken outside the lock: a waker may take its task's.
        due.into_iter().for_each(Waker::wake);
        (earliest != NONE).then_some(earliest)
    }

    /// Wakes every wait, whatever its round.
    fn wake_all(&self) {
        let due = {
            let mut waits = self.waits();
            waits.earliest = NONE;
            std::mem::take(&mut waits.waiting)
        };
        due.into_iter().for_each(|w| w.waker.wake());
    }
}

/// The slot of connection `conn`. `ConnId`s count up: consecutive connections fall in
/// consecutive slots.
fn slot_of(conn: ConnId) -> usize {
    (conn.0 % SLOTS as u64) as usize
}

impl Slots {
    /// When `slot`'s first round comes, in nanoseconds after `start`.
    fn first_ns(&self, slot: usize) -> u64 {
        self.spacing.as_nanos() as u64 * (slot as u64 + 1)
    }

    /// How many rounds `slot` has had by `now`.
    fn round_at(&self, slot: usize, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos() as u64;
        match elapsed.checked_sub(self.first_ns(slot)) {
            None => 0,
            Some(since_first) => since_first / self.beat.as_nanos().max(1) as u64 + 1,
        }
    }

    /// When `slot`'s `round` comes (rounds start at 1), in nanoseconds after `start`.
    fn due_ns(&self, slot: usize, round: u64) -> u64 {
        let beats = (self.beat.as_nanos() as u64).saturating_mul(round.saturating_sub(1));
        self.first_ns(slot).saturating_add(beats)
    }

    /// Notes a wait due at `at` (nanoseconds after `start`): the clock's task is woken to
    /// sleep for less if it is the earliest.
    fn waits_for(&self, at: u64) {
        if at < self.next.fetch_min(at, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Wakes the waits due at `now`, in every slot, and notes when the next is due.
    fn wake_due(&self, now: Instant) {
        #[cfg(test)]
        self.wakes.fetch_add(1, Ordering::Relaxed);
        // Cleared first: a wait registered meanwhile is either seen below or notes itself
        // after this.
        self.next.store(NONE, Ordering::Release);
        for (slot, waits) in self.slots.iter().enumerate() {
            if let Some(round) = waits.wake_until(self.round_at(slot, now)) {
                self.waits_for(self.due_ns(slot, round));
            }
        }
    }
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
            spacing: (beat / SLOTS as u32).max(Duration::from_millis(1)),
            start: Instant::now(),
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            stopping: AtomicBool::new(false),
            next: AtomicU64::new(NONE),
            wake: Arc::new(Notify::new()),
            #[cfg(test)]
            wakes: AtomicU64::new(0),
        });
        tokio::spawn(run(Arc::downgrade(&slots), slots.wake.clone(), shutdown));
        KeepaliveClock { slots }
    }

    /// The beat of connection `conn`: its first tick is its slot's next.
    pub fn beat(&self, conn: ConnId) -> Beat {
        let slot = slot_of(conn);
        let next = self.slots.round_at(slot, Instant::now()) + 1;
        Beat { conn, due: next, registered: 0, left_behind: false, gate: Gate::new(), clock: self.slots.clone() }
    }
}

impl Beat {
    /// Waits for the connection's next beat: at once if its round has passed while the
    /// connection was busy. After it, the next is the slot's next round, unless [`Beat::rest`]
    /// says otherwise.
    /// Cancel-safe: a wait dropped before its beat keeps its place for the next call.
    pub async fn tick(&mut self) {
        std::future::poll_fn(|cx| {
            let Beat { conn, due, registered, gate, clock, .. } = self;
            let slot_index = slot_of(*conn);
            let slot = &clock.slots[slot_index];
            let ready = gate.poll(cx, |cx| {
                if clock.stopping.load(Ordering::Acquire) || clock.round_at(slot_index, Instant::now()) >= *due {
                    return Poll::Ready(());
                }
                if *registered != *due {
                    {
                        let mut waits = slot.waits();
                        waits.waiting.push(Waiting { round: *due, conn: *conn, waker: cx.waker().clone() });
                        waits.earliest = waits.earliest.min(*due);
                    }
                    *registered = *due;
                    clock.waits_for(clock.due_ns(slot_index, *due));
                    // A shutdown whose wake-up went through the slot before the wait was in it
                    // set `stopping` before taking the slot's lock, which this wait took after:
                    // it is seen here.
                    if clock.stopping.load(Ordering::Acquire) {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending
            });
            if ready.is_ready() {
                if *registered <= *due {
                    // Reached, so removed by the clock (or about to be, a spurious wake-up).
                    *registered = 0;
                }
                *due = clock.round_at(slot_index, Instant::now()) + 1;
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

    /// Makes the connection's next beat its slot's next round, if it was resting longer
    /// (something became due sooner).
    pub fn wake_at_next(&mut self) {
        let slot = slot_of(self.conn);
        let next = self.clock.round_at(slot, Instant::now()) + 1;
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

    /// The time between two beats of the connection's slot.
    pub fn period(&self) -> Duration {
        self.clock.beat
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        if self.registered != 0 || self.left_behind {
            // Its wait would wake a connection that is gone, and hold its task until then.
            let conn = self.conn;
            self.clock.slots[slot_of(conn)].waits().waiting.retain(|w| w.conn != conn);
        }
    }
}

/// Sleeps until the earliest registered wait is due and wakes the waits then due, until
/// nobody holds the clock; with no wait registered, sleeps until one is. When `shutdown` is
/// cancelled, wakes every connection at once.
async fn run(slots: Weak<Slots>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut stopped = false;
    loop {
        // A wait registered after this reading notifies `wake`, which is not missed: its
        // permit is kept for the `notified` below.
        let Some(next) = slots.upgrade().map(|clock| {
            let next = clock.next.load(Ordering::Acquire);
            (next != NONE).then(|| clock.start + Duration::from_nanos(next))
        }) else {
            return;
        };
        tokio::select! {
            () = async { tokio::time::sleep_until(next.unwrap_or_else(Instant::now)).await }, if next.is_some() => {}
            () = wake.notified() => continue,
            () = shutdown.cancelled(), if !stopped => {
                stopped = true;
                if let Some(clock) = slots.upgrade() {
                    clock.stopping.store(true, Ordering::Release);
                    clock.slots.iter().for_each(Slot::wake_all);
                }
                continue;
            }
        }
        let Some(clock) = slots.upgrade() else { return };
        clock.wake_due(Instant::now());
        if clock.stopping.load(Ordering::Acquire) {
            // A connection that registered after the shutdown's wake-up is woken here.
            clock.slots.iter().for_each(Slot::wake_all);
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
        assert_eq!(clock.slots.slots[2].waits().waiting.len(), 1);
        drop(b);
        assert!(clock.slots.slots[2].waits().waiting.is_empty(), "a closed connection leaves no wait behind");
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_wakes_only_when_a_wait_is_due() {
        let beat = Duration::from_millis(1250);
        let clock = KeepaliveClock::start(beat, CancellationToken::new());
        // Nobody waits: the clock sleeps, however long.
        let idle = clock.beat(ConnId(0));
        tokio::time::sleep(beat * 20).await;
        assert_eq!(clock.slots.wakes.load(Ordering::Relaxed), 0, "woken with no wait registered");
        drop(idle);
        // Three connections in three slots, each resting four beats after each beat, for
        // twenty beats: the clock wakes for their beats alone (it used to tick ten times a
        // beat, 200 times), and each beat comes on time.
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = [1, 2, 3]
            .map(|conn| {
                let mut b = clock.beat(ConnId(conn));
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    while start.elapsed() < beat * 20 {
                        b.tick().await;
                        times.push(start.elapsed());
                        b.rest(4);
                    }
                    times
                })
            })
            .into_iter()
            .collect();
        for task in tasks {
            let times = task.await.unwrap();
            assert!(times.len() >= 5, "{times:?}");
            assert!(times.windows(2).all(|w| w[1] - w[0] == beat * 4), "{times:?}");
        }
        let wakes = clock.slots.wakes.load(Ordering::Relaxed);
        assert!((5..=3 * 6).contains(&wakes), "{wakes} wakes for 3 connections' 5 or 6 beats each");
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
