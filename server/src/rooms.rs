//! The room registry and the driver of each room's machine.
//!
//! [`Rooms`] is a cheap-clone handle to every room this node serves. Each [`Room`] drives a
//! sans-IO [`RoomMachine`] (board, meeting, presence tracking, saves, the bus outbox; every
//! rule lives there) and carries out what it asks for:
//! - its effects: frames for this node's connections, already encoded and shared, handed to
//!   each connection's outlet (written to its socket at once when its task is idle, see
//!   `outlet.rs`), and envelopes for the other nodes, on the room's bus queue;
//! - its store requests, for jobs that wait on the backends: [`Room::run`] loops
//!   "advance the job, perform its request" until the job is done.
//!
//! The machine sits behind a std `Mutex` that is never held across an `.await`: a caller
//! locks, feeds the machine, publishes its effects and unlocks; backend calls happen outside.
//! Delivering under the lock gives every connection one order of frames. A std `Mutex` rather
//! than tokio's, because no critical section awaits (the mini-redis `db.rs` reasoning): it is
//! cheaper, and clippy's `await_holding_lock` keeps it that way.
//!
//! The driver reads the clock (Unix milliseconds, so that clients can render countdowns from
//! the timestamps in the room state) and passes it in; the machine never does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use balint_proto::room::{ClientMessage, Role};
use balint_proto::sync::FrameError;
use bytes::Bytes;
use rand::distributions::{Alphanumeric, DistString};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::backend::{BackendError, BoardStore, Bus, Presence, RoomStore, StoredBoard};
use crate::fanout::{self, Envelope};
use crate::limits;
use crate::outlet::Outlet;
use crate::room::board::Board;
use crate::room::machine::{self, Answer, Effect, Frame, Io, Job, Node, Outcome, RoomMachine, Step};
pub use crate::room::machine::{BinaryOutcome, RoomOptions};
use crate::room::meeting::{record, Audience, Meeting, TitleChange, TitleError};
use crate::room::sealed::SealedLog;
pub use crate::room::RoomSettings;
use crate::room::{ConnId, RandomIds};
use crate::room_threads::RoomThreads;

/// A frame for this node's connections, encoded once and shared by every recipient.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The connection whose input produced the frame; it does not get its own echo.
    pub origin: Option<ConnId>,
    /// The connections the frame is for.
    pub audience: Audience,
    /// The frame. A close frame tells its audience to close.
    pub message: Message,
    /// When the frame was published, for the fan-out latency metric.
    pub published: Instant,
}

/// A connection's place among its room's outlets ([`Room::connect`]), left when dropped.
pub struct Subscription {
    room: Arc<Room>,
    conn: ConnId,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.room.outlets).retain(|outlet| outlet.conn() != self.conn);
    }
}

/// The backends and identity this node shares with its rooms. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    /// Room records.
    pub store: Arc<dyn RoomStore>,
    /// Presence entries.
    pub presence: Arc<dyn Presence>,
    /// Fan-out to other nodes.
    pub bus: Arc<dyn Bus>,
    /// Boards of persistent rooms.
    pub boards: Arc<dyn BoardStore>,
    /// Where failures and sizes are counted.
    pub metrics: crate::metrics::Metrics,
    /// This node's id, random per process.
    pub node: Arc<str>,
    /// Settings every room shares.
    pub options: RoomOptions,
    /// The node's room threads: a room's publisher task runs on its room's thread, beside
    /// its connections (none: on the runtime that opens the room).
    pub threads: Arc<RoomThreads>,
}

impl Cluster {
    /// A single node's cluster: records, presence and the bus in this process's memory, and
    /// persistent boards in `boards`.
    pub fn embedded(
        boards: Arc<dyn BoardStore>,
        metrics: crate::metrics::Metrics,
        node: Arc<str>,
        options: RoomOptions,
    ) -> Self {
        let embedded = Arc::new(crate::backend::embedded::Embedded::default());
        Cluster {
            store: embedded.clone(),
            presence: embedded.clone(),
            bus: embedded,
            boards,
            metrics,
            node,
            options,
            threads: Arc::new(RoomThreads::none()),
        }
    }
}

impl Cluster {
    /// What a room machine of this node needs to know about it.
    fn machine_node(&self) -> Node {
        Node {
            id: self.node.clone(),
            clustered: self.bus.reaches_other_nodes(),
            options: self.options.clone(),
            ids: Arc::new(RandomIds),
        }
    }
}

/// One room on this node: its machine and what carries out its effects.
pub struct Room {
    id: String,
    /// This room, for the timer queue and the publisher task, which must not keep it alive.
    me: Weak<Room>,
    machine: Mutex<RoomMachine>,
    /// The outlets of this node's connections to the room, which its frames are handed to.
    /// Locked under the machine's lock, or alone when a connection goes.
    outlets: Mutex<Vec<Arc<Outlet>>>,
    cluster: Cluster,
    /// What this node has for the other nodes, on its way to the bus; none with one node.
    outbox: Option<Outbox>,
    /// The node's timer queue, where this room waits for its next due time.
    timers: Arc<Timers>,
    /// Where the room stands with the timer queue, in one word so that the queue's claim and
    /// a step's scheduling cannot interleave: [`NOT_DUE`] when it waits there for nothing, the
    /// Unix ms it is due at while it waits, or [`CLAIMED`] from the moment the queue takes it
    /// for a tick until that tick is done (which schedules it again): a room is never queued
    /// twice, nor woken twice for one due time.
    due: AtomicU64,
    /// Set when the room leaves this node's registry (retired or unloaded): it waits for
    /// nothing any more.
    gone: AtomicBool,
}

/// The queue in front of a room's publisher task ([`publish_batches`]).
struct Outbox {
    queue: mpsc::Sender<Envelope>,
}

impl Outbox {
    /// Starts the room's publisher task, on the room's thread if it has one (where its
    /// connections queue the envelopes, and where its Redis connection runs): an edit then
    /// reaches Redis without waking another thread. It ends when the room (the sender) goes.
    fn start(room: &str, cluster: &Cluster, me: Weak<Room>) -> Self {
        let (queue, pending) = mpsc::channel(limits::BUS_QUEUE_MESSAGES);
        let task = publish_batches(room.to_owned(), cluster.clone(), pending, me);
        match cluster.threads.for_room(room) {
            Some(thread) => drop(thread.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
        Outbox { queue }
    }
}

/// Publishes a room's queued envelopes in order: one bus message for whatever is queued when
/// the previous publish returns (up to [`limits::BUS_BATCH_MESSAGES`] envelopes and
/// [`limits::BUS_BATCH_BYTES`]), so a busy room costs one Redis command per batch, not one per
/// update, and no member waits for Redis.
async fn publish_batches(room: String, cluster: Cluster, mut pending: mpsc::Receiver<Envelope>, me: Weak<Room>) {
    let mut batch = Vec::new();
    while let Some(first) = pending.recv().await {
        let mut bytes = first.body_len();
        batch.push(first);
        while batch.len() < limits::BUS_BATCH_MESSAGES && bytes < limits::BUS_BATCH_BYTES {
            match pending.try_recv() {
                Ok(next) => {
                    bytes += next.body_len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let payload = fanout::encode_batch(&cluster.node, &batch);
        cluster.metrics.bus_published(batch.len());
        batch.clear();
        match cluster.bus.publish(&room, payload).await {
            Ok(()) => {}
            // The room was retired here: what was still queued has nobody to resync for.
            Err(BackendError::NotOpen) => debug!(room = %room, "bus message for a retired room dropped"),
            Err(e) => {
                debug!(room = %room, error = %e, "bus publish failed");
                cluster.metrics.backend_error();
                // A possible loss: the room resyncs at its next tick, due at once.
                if let Some(room) = me.upgrade() {
                    room.mark_resync();
                }
            }
        }
    }
}

impl Room {
    fn new(machine: RoomMachine, cluster: Cluster, timers: Arc<Timers>) -> Arc<Self> {
        Arc::new_cyclic(|me| {
            let id = machine.id().to_owned();
            let outbox = cluster.bus.reaches_other_nodes().then(|| Outbox::start(&id, &cluster, me.clone()));
            Room {
                id,
                me: me.clone(),
                machine: Mutex::new(machine),
                outlets: Mutex::new(Vec::new()),
                cluster,
                outbox,
                timers,
                due: AtomicU64::new(NOT_DUE),
                gone: AtomicBool::new(false),
            }
        })
    }

    /// The room id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn lock(&self) -> MutexGuard<'_, RoomMachine> {
        // A panic while holding this lock would be a bug in the machine; the state it guards
        // is still the best copy of the board there is, so keep serving it.
        lock(&self.machine)
    }

    /// Feeds the machine with `input` and carries out its effects, under one lock.
    /// Feeds the machine with `input`, carries out its effects and puts the room in the timer
    /// queue for its next due time, under one lock.
    fn step<T>(&self, input: impl FnOnce(&mut RoomMachine) -> T) -> T {
        self.step_then(input, true)
    }

    /// [`Room::step`], scheduling only if `schedule`: a job's steps between its store requests
    /// leave the machine half way (a leave has forgotten the connection, not yet marked the
    /// member gone), which is no time to say when the room is due; the job schedules when it
    /// is done ([`Room::run`]).
    fn step_then<T>(&self, input: impl FnOnce(&mut RoomMachine) -> T, schedule: bool) -> T {
        let mut machine = self.lock();
        let result = input(&mut machine);
        // The step's frames, handed to the connections together: each gets them in one write.
        let mut frames = Vec::new();
        while let Some(effect) = machine.poll_effect() {
            match effect {
                Effect::Send { origin, audience, frame } => {
                    let message = match frame {
                        Frame::Text(text) => Message::Text(text.into()),
                        Frame::Binary(bytes) => Message::Binary(bytes),
                        Frame::Close { code, reason } => {
                            Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))
                        }
                    };
                    frames.push(Arc::new(Outbound { origin, audience, message, published: Instant::now() }));
                }
                Effect::Publish(envelope) => {
                    // It never waits: the room's publisher task sends what is queued. A full
                    // queue (the backend is away or slow) is the machine's to handle.
                    let queued = self.outbox.as_ref().is_some_and(|o| o.queue.try_send(envelope).is_ok());
                    if !queued {
                        machine.bus_queue_full();
                    }
                }
                Effect::BackendFailed => self.cluster.metrics.backend_error(),
            }
        }
        if !frames.is_empty() {
            let bound = self.cluster.options.outbound_queue;
            for outlet in lock(&self.outlets).iter() {
                outlet.deliver(&frames, bound, &self.cluster.metrics);
            }
        }
        if schedule {
            self.schedule(&mut machine);
        }
        result
    }

    /// Puts the room in the timer queue for its machine's next due time, if that is earlier
    /// than the time it waits for there already. A later one needs nothing: the room is woken
    /// early, finds nothing to do, and is put back for the right time. While its tick runs,
    /// the tick puts it back when done. Called with the machine locked, so that no two steps
    /// schedule from different states at once.
    fn schedule(&self, machine: &mut RoomMachine) {
        if self.gone.load(Ordering::Acquire) || self.due.load(Ordering::Acquire) == CLAIMED {
            return;
        }
        let now = crate::unix_now_ms();
        let Some(at) = machine.next_due(now, self.timers.awareness_timeout_ms()) else { return };
        // Never over a claim made since the check above: `CLAIMED` is below every due time.
        let earlier = self
            .due
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |scheduled| (at < scheduled).then_some(at))
            .is_ok();
        if earlier {
            self.timers.push(at, self.me.clone());
        }
    }

    /// Drives `job` to its end: advances it, performs what it asks of the stores, and feeds
    /// the answer back.
    /// The room is scheduled for its next due time once the job is done, or dropped.
    async fn run(&self, mut job: Job) -> Outcome {
        let _done = Scheduled(self);
        let mut answer = None;
        loop {
            let now = crate::unix_now_ms();
            match self.step_then(|m| m.advance(&mut job, answer.take(), now), false) {
                Step::Io(io) => answer = Some(self.perform(io).await),
                Step::Done(outcome) => return outcome,
            }
        }
    }

    async fn perform(&self, io: Io) -> Answer {
        let cluster = &self.cluster;
        let id = self.id.as_str();
        match io {
            Io::CompareAndSet { version, record, announce, ttl } => {
                Answer::Written(cluster.store.compare_and_set(id, version, record, announce, ttl).await)
            }
            Io::Load => Answer::Loaded(cluster.store.load(id).await),
            Io::IsEnded => Answer::Ended(cluster.store.is_ended(id).await),
            Io::Restore { version, record, ttl } => {
                Answer::Written(cluster.store.restore(id, version, record, ttl).await)
            }
            Io::Heartbeat { entries, now_ms, ttl } => {
                Answer::Finished(cluster.presence.heartbeat(id, &entries, now_ms, ttl).await)
            }
            Io::RemovePresence { entry } => Answer::Finished(cluster.presence.remove(id, &entry).await),
            Io::ReadPresence { now_ms } => Answer::Live(cluster.presence.live(id, now_ms).await),
            Io::Save(stored) => Answer::Finished(cluster.boards.save(id, stored).await),
        }
    }

    /// Whether the meeting has ended.
    pub fn is_ended(&self) -> bool {
        self.lock().is_ended()
    }

    /// Whether this is a persistent room with nobody connected here for a while and nothing
    /// unsaved: its memory can go.
    pub fn is_idle(&self, now_ms: u64) -> bool {
        self.lock().is_idle(now_ms)
    }

    /// Whether the meeting is ephemeral.
    pub fn is_ephemeral(&self) -> bool {
        self.lock().is_ephemeral()
    }

    /// Whether the room's board is sealed.
    pub fn is_sealed(&self) -> bool {
        self.lock().is_sealed()
    }

    /// The room state as a leader sees it.
    pub fn leader_view(&self) -> balint_proto::room::RoomState {
        self.lock().leader_view()
    }

    /// The board as Markdown, for a leader's export.
    pub fn export_markdown(&self) -> String {
        self.lock().export_markdown()
    }

    /// The room's current link generation, for links issued now.
    pub fn link_generation(&self) -> u64 {
        self.lock().link_generation()
    }

    /// Registers a connection that passed the link check (a link of `role` and link
    /// generation `generation`), whose frames go to `outlet` from now on. It becomes a member
    /// with its first message. The outlet is let go of when the subscription is dropped.
    pub fn connect(
        self: &Arc<Self>,
        role: Role,
        generation: u64,
        name: String,
        outlet: Arc<Outlet>,
    ) -> Option<Subscription> {
        let conn = outlet.conn();
        let mut machine = self.lock();
        if !machine.connect(conn, role, generation, name) {
            return None;
        }
        lock(&self.outlets).push(outlet);
        Some(Subscription { room: self.clone(), conn })
    }

    /// Renews the room's links. Returns the new generation; `None` when the store could not
    /// be written.
    pub async fn renew_links(&self) -> Option<u64> {
        self.run(Job::renew_links()).await.renewed
    }

    /// A leader sets the room's title. `Ok(false)` when it could not be written (the stores do
    /// not answer); `Err` when it does not fit the room (a title in clear for a sealed room,
    /// say).
    pub async fn set_title(&self, change: TitleChange) -> Result<bool, TitleError> {
        self.step(|m| m.check_title(&change))?;
        Ok(self.run(Job::set_title(change)).await.committed)
    }

    /// Feeds a binary frame from `conn`.
    pub async fn handle_binary(&self, conn: ConnId, frame: Bytes) -> Result<BinaryOutcome, FrameError> {
        self.run(Job::binary(conn, frame)).await.binary.unwrap_or_else(|| Ok(BinaryOutcome::default()))
    }

    /// Feeds a room-protocol message from `conn`, received at `now_ms`.
    pub async fn handle_text(&self, conn: ConnId, message: ClientMessage, now_ms: u64) {
        self.run(Job::command(conn, message, now_ms)).await;
    }

    /// A connection closed.
    pub async fn leave(&self, conn: ConnId) {
        self.run(Job::leave(conn)).await;
    }

    /// Runs the room's timers, then puts the room back in the timer queue for its next due
    /// time. Only the timer queue's claim calls it ([`Rooms::wake`]): while the claim holds,
    /// nothing else queues the room, so one tick runs at a time.
    async fn tick(&self, awareness_timeout: Duration) {
        debug_assert_eq!(self.due.load(Ordering::Acquire), CLAIMED, "a tick without the queue's claim");
        let _done = TickDone(self);
        self.run(Job::tick(awareness_timeout)).await;
    }

    /// Saves whatever is unsaved now (at shutdown).
    pub async fn save_now(&self) {
        self.run(Job::save_now()).await;
    }

    /// Ends the meeting for everyone, for `reason`.
    pub async fn end(&self, reason: &str) {
        self.run(Job::end(reason)).await;
    }

    /// Re-announces everything this node holds after the backend came back.
    pub async fn rebuild(&self) {
        self.run(Job::rebuild()).await;
    }

    /// Asks the other nodes for whatever of the board this node lacks.
    pub fn request_catch_up(&self, mutual: bool) {
        self.step(|m| m.request_catch_up(mutual));
    }

    /// Notes that a bus message may have been lost.
    pub fn mark_resync(&self) {
        self.step(RoomMachine::mark_resync);
    }

    /// Handles a message from another node.
    pub fn on_bus(&self, from: &str, envelope: Envelope) {
        let now = crate::unix_now_ms();
        self.step(|m| m.on_bus(from, envelope, now));
    }
}

/// [`Room::due`] when the room waits in the timer queue for nothing.
const NOT_DUE: u64 = u64::MAX;

/// [`Room::due`] while the timer queue's claim on the room holds: from the moment the queue
/// takes it until its tick is done. Below every due time, so that no scheduling replaces it.
const CLAIMED: u64 = 0;

/// Ends a job, even one dropped half way: the room is scheduled for its next due time.
struct Scheduled<'a>(&'a Room);

impl Drop for Scheduled<'_> {
    fn drop(&mut self) {
        let mut machine = self.0.lock();
        self.0.schedule(&mut machine);
    }
}

/// Ends a room's tick, even one dropped half way: the room is scheduled again.
struct TickDone<'a>(&'a Room);

impl Drop for TickDone<'_> {
    fn drop(&mut self) {
        let mut machine = self.0.lock();
        // An ended room is retired right after its tick: it keeps the claim, as there is
        // nothing more to wait for.
        if !machine.is_ended() {
            self.0.due.store(NOT_DUE, Ordering::Release);
            self.0.schedule(&mut machine);
        }
    }
}

/// The node's timer queue: every room that waits for a due time, earliest first, and one
/// task ([`Rooms::run_timers`]) that sleeps until the earliest and wakes the rooms then due.
/// A room with nothing due is not in it, and costs nothing until an input changes that.
///
/// A binary heap of `(due, room)` under a mutex, and one `sleep_until` for the whole node,
/// rather than a task (and a timer) per room: a room waits in the queue only while something
/// of it is due, pushing is `O(log n)`, and the task sleeps once for every room due at the
/// same moment. Entries are never removed early: a room scheduled earlier leaves its later
/// entry behind, which is skipped when it comes up (`Room::due` no longer matches), as is the
/// entry of a room that left this node (its `Weak` is dead).
pub struct Timers {
    queue: Mutex<BinaryHeap<Reverse<Wake>>>,
    /// Told when an entry goes before the earliest, so the task sleeps less.
    earlier: Notify,
    awareness_timeout_ms: AtomicU64,
}

/// A room's entry in the timer queue.
struct Wake {
    at: u64,
    room: Weak<Room>,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Wake {}

impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Wake {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            queue: Mutex::default(),
            earlier: Notify::new(),
            awareness_timeout_ms: AtomicU64::new(limits::AWARENESS_TIMEOUT.as_millis() as u64),
        }
    }
}

impl Timers {
    fn awareness_timeout_ms(&self) -> u64 {
        self.awareness_timeout_ms.load(Ordering::Relaxed)
    }

    fn push(&self, at: u64, room: Weak<Room>) {
        let mut queue = lock(&self.queue);
        let first = queue.peek().is_none_or(|Reverse(earliest)| at < earliest.at);
        queue.push(Reverse(Wake { at, room }));
        drop(queue);
        if first {
            self.earlier.notify_one();
        }
    }

    /// When the earliest entry is due.
    fn earliest(&self) -> Option<u64> {
        lock(&self.queue).peek().map(|Reverse(wake)| wake.at)
    }

    /// Takes the rooms due at `now`, each claimed once: an entry whose room waits for
    /// another time (or is gone) is dropped.
    fn take_due(&self, now: u64) -> Vec<Arc<Room>> {
        let mut due = Vec::new();
        // Dropped after the lock: a room may go with its last reference here.
        let mut stale = Vec::new();
        let mut queue = lock(&self.queue);
        while queue.peek().is_some_and(|Reverse(wake)| wake.at <= now) {
            let Some(Reverse(wake)) = queue.pop() else { break };
            let Some(room) = wake.room.upgrade() else { continue };
            let claimed = room.due.compare_exchange(wake.at, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok();
            if claimed {
                due.push(room);
            } else {
                stale.push(room);
            }
        }
        drop(queue);
        drop(stale);
        due
    }

    /// Rooms waiting in the queue, stale entries included (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.queue).len()
    }
}

/// A room set up in the stores ([`Rooms::set_up`]), not yet open anywhere.
#[derive(Debug, Clone)]
pub struct SetUp {
    id: String,
}

impl SetUp {
    /// The room id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Where a room id stands.
pub enum Lookup {
    /// The room is open.
    Live(Arc<Room>),
    /// The room existed and its meeting has ended.
    Ended,
    /// No such room: neither a record, nor a stored board, nor a tombstone. With a durable
    /// board store, a persistent room is never in this case unless the store lost it.
    Unknown,
}

struct Registry {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Ended rooms and when they ended, for rooms this node served. Ids only, no content.
    tombstones: Mutex<HashMap<String, Instant>>,
    next_conn: AtomicU64,
    cluster: Cluster,
    /// Whether the backend answered at the last check.
    healthy: AtomicBool,
    /// The backend's [`RoomStore::primary_epoch`] at the last check that it answered.
    epoch: AtomicU64,
    /// Every open room waiting for a due time.
    timers: Arc<Timers>,
}

/// A cheap-clone handle to every room of this node.
#[derive(Clone)]
pub struct Rooms {
    shared: Arc<Registry>,
}

impl Rooms {
    /// An empty registry over `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Rooms {
            shared: Arc::new(Registry {
                rooms: Mutex::default(),
                tombstones: Mutex::default(),
                next_conn: AtomicU64::new(1),
                cluster,
                healthy: AtomicBool::new(true),
                epoch: AtomicU64::new(0),
                timers: Arc::default(),
            }),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.shared.cluster.node
    }

    /// Whether this node holds as many rooms as it may: rooms open here, or, with the
    /// embedded backend, room records in its memory (rooms set up ahead among them).
    pub fn is_full(&self) -> bool {
        let held = self.shared.cluster.store.held_in_memory().unwrap_or(0);
        self.len().max(held) >= self.shared.cluster.options.max_rooms
    }

    /// Sets a room up with a fresh random id: its record (and a persistent room's empty
    /// board) goes to the stores, and nothing stays in this node's memory. The room opens, on
    /// this node as on any other, when someone first asks for it ([`Rooms::lookup`]), so a
    /// room set up ahead costs its record in the store and nothing on any node: no machine,
    /// no outlets, no subscription to the bus, no connection to Redis.
    pub async fn set_up(&self, settings: RoomSettings) -> Result<SetUp, BackendError> {
        let cluster = &self.shared.cluster;
        let id = Alphanumeric.sample_string(&mut rand::thread_rng(), 16).to_ascii_lowercase();
        let meeting = self.new_meeting(&settings);
        let record = record::encode(meeting.shared()).map_err(|_| BackendError::Corrupt)?;
        let written = cluster.store.create(&id, record, cluster.options.record_ttl(meeting.shared())).await;
        let saved = match written {
            Ok(_) if !settings.ephemeral => {
                // The room exists for good from now on, even if nobody writes before a restart.
                let empty = if settings.sealed {
                    SealedLog::default().encode_stored()
                } else {
                    Bytes::from(Board::new().encode_state())
                };
                let stored = StoredBoard { settings: machine::settings_json(meeting.shared()), board: empty };
                cluster.boards.save(&id, stored).await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        // Release what the writes opened (with Redis, the room's connection): the room is
        // held by nobody until it opens.
        let _ = cluster.bus.unsubscribe(&id).await;
        saved.map(|()| SetUp { id })
    }

    /// Creates a room with a fresh random id and opens it on this node, as the first
    /// connection to it would.
    pub async fn create(&self, settings: RoomSettings) -> Result<Arc<Room>, BackendError> {
        let set_up = self.set_up(settings).await?;
        match self.lookup(set_up.id()).await? {
            Lookup::Live(room) => Ok(room),
            // Ended or lost between the two calls: the store no longer has it.
            Lookup::Ended | Lookup::Unknown => Err(BackendError::NotOpen),
        }
    }

    fn new_meeting(&self, settings: &RoomSettings) -> Meeting {
        self.shared.cluster.options.new_meeting(settings, self.now_ms())
    }

    /// Saves every persistent board that has unsaved changes, now (at shutdown).
    pub async fn save_all(&self) {
        let rooms: Vec<_> = lock(&self.shared.rooms).values().cloned().collect();
        for room in rooms {
            room.save_now().await;
        }
    }

    /// Deletes a room for good: ends its meeting for everyone, wipes it like an ephemeral end,
    /// and deletes its stored board.
    pub async fn delete(&self, room: &Arc<Room>) -> Result<(), BackendError> {
        room.end("deleted").await;
        self.retire(room.id()).await;
        self.shared.cluster.boards.delete(room.id()).await
    }

    /// Finds a room: served here already, or opened here from the store.
    pub async fn lookup(&self, id: &str) -> Result<Lookup, BackendError> {
        if let Some(room) = lock(&self.shared.rooms).get(id) {
            return Ok(if room.is_ended() { Lookup::Ended } else { Lookup::Live(room.clone()) });
        }
        if lock(&self.shared.tombstones).get(id).is_some_and(|ended| ended.elapsed() < limits::TOMBSTONE_TTL) {
            return Ok(Lookup::Ended);
        }
        let cluster = &self.shared.cluster;
        if cluster.store.is_ended(id).await? {
            // Nothing of a room this node does not serve stays open here.
            let _ = cluster.bus.unsubscribe(id).await;
            return Ok(Lookup::Ended);
        }
        // The room's record first: an ephemeral room never reaches the board store, so it
        // carries on whatever becomes of that store.
        let mut record = cluster.store.load(id).await?;
        let ephemeral = match &record {
            Some(stored) => record::decode(&stored.record).map_err(|_| BackendError::Corrupt)?.is_ephemeral(),
            None => false,
        };
        // A persistent room's board, if it is one. A board that cannot be read (or a board
        // store that does not answer) is an error: the room stays closed and the stored copy
        // stays as it is, never replaced by an empty board.
        let board = if ephemeral { None } else { cluster.boards.load(id).await? };
        if record.is_none() {
            if let Some(board) = &board {
                // A persistent room nobody serves right now (after a restart, or after Redis
                // lost its records): its meeting starts afresh from its settings.
                let settings = record::decode_settings(&board.settings).map_err(|_| BackendError::Corrupt)?;
                let meeting = self.new_meeting(&settings);
                let fresh = record::encode(meeting.shared()).map_err(|_| BackendError::Corrupt)?;
                cluster.store.restore(id, 1, fresh, cluster.options.record_ttl(meeting.shared())).await?;
                record = cluster.store.load(id).await?;
            }
        }
        if board.is_none() && !ephemeral && cluster.boards.is_deleted(id).await? {
            // The board store's tombstone outlives any record or tombstone in Redis.
            let _ = cluster.bus.unsubscribe(id).await;
            return Ok(Lookup::Ended);
        }
        let Some(stored) = record else {
            let _ = cluster.bus.unsubscribe(id).await;
            return Ok(Lookup::Unknown);
        };
        let shared = record::decode(&stored.record).map_err(|_| BackendError::Corrupt)?;
        if shared.is_ended() {
            let _ = cluster.bus.unsubscribe(id).await;
            return Ok(Lookup::Ended);
        }
        cluster.bus.subscribe(id).await?;
        let opened = {
            let mut rooms = lock(&self.shared.rooms);
            if let Some(room) = rooms.get(id) {
                // Another request opened it meanwhile.
                return Ok(Lookup::Live(room.clone()));
            }
            let meeting = Meeting::from_shared(shared, stored.version);
            let mut machine = RoomMachine::new(id, meeting, cluster.machine_node());
            if let Some(board) = &board {
                machine.load_board(board).map_err(|_| BackendError::Corrupt)?;
            }
            let room = Room::new(machine, cluster.clone(), self.shared.timers.clone());
            rooms.insert(id.to_owned(), room.clone());
            room
        };
        cluster.metrics.set_rooms(self.len());
        info!(room = id, "room opened on this node");
        // Asking the others is an input like any: it puts the room in the timer queue for
        // whatever of it is due.
        opened.request_catch_up(false);
        Ok(Lookup::Live(opened))
    }

    /// Delivers a message from the bus to its room.
    pub fn dispatch(&self, room: &str, payload: Bytes) {
        if payload.is_empty() {
            // The room's subscription dropped: messages may have been missed meanwhile.
            if let Some(room) = lock(&self.shared.rooms).get(room) {
                room.mark_resync();
            }
            return;
        }
        let Some((from, envelopes)) = fanout::decode(payload) else { return };
        if from == self.node() {
            return;
        }
        let room = lock(&self.shared.rooms).get(room).cloned();
        if let Some(room) = room {
            for envelope in envelopes {
                room.on_bus(&from, envelope);
            }
        }
    }

    /// A new connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.shared.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// The clock the room cores run on: Unix milliseconds, so that clients can render
    /// countdowns from the timestamps in the room state.
    pub fn now_ms(&self) -> u64 {
        crate::unix_now_ms()
    }

    /// Wakes every room when it is due, until the task is dropped: the node's one timer.
    /// `awareness_timeout` is what the rooms' ticks sweep awareness states with.
    pub async fn run_timers(&self, awareness_timeout: Duration) {
        let timers = self.shared.timers.clone();
        timers.awareness_timeout_ms.store(awareness_timeout.as_millis() as u64, Ordering::Relaxed);
        loop {
            // A push between the peek and the wait leaves its notification for the wait.
            let earlier = timers.earlier.notified();
            match timers.earliest() {
                None => earlier.await,
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(self.now_ms()));
                    if !wait.is_zero() {
                        tokio::select! {
                            () = earlier => continue,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            for room in timers.take_due(self.now_ms()) {
                let rooms = self.clone();
                // On the room's thread, where its connections and its Redis connection run:
                // the tick's reads and writes (a presence reading a second, with members on
                // other nodes) and the frames it sends then wake no other thread.
                let thread = self.shared.cluster.threads.for_room(room.id()).cloned();
                let wake = async move { rooms.wake(room, awareness_timeout).await };
                match thread {
                    Some(thread) => drop(thread.spawn(wake)),
                    None => drop(tokio::spawn(wake)),
                }
            }
        }
    }

    /// A room is due: its tick runs, then it is retired if its meeting ended, or unloaded if
    /// it is idle.
    async fn wake(&self, room: Arc<Room>, awareness_timeout: Duration) {
        self.shared.cluster.metrics.room_woken();
        room.tick(awareness_timeout).await;
        let current = lock(&self.shared.rooms).get(room.id()).is_some_and(|open| Arc::ptr_eq(open, &room));
        if !current {
            return;
        }
        if room.is_ended() {
            self.retire(room.id()).await;
        } else if room.is_idle(self.now_ms()) {
            self.unload(room.id()).await;
        }
    }

    /// Checks the backend, every [`limits::TICK_INTERVAL`] until the task is dropped, and
    /// rebuilds the backend's view from this node's rooms when it comes back: one ping a
    /// second for the whole node, whatever its rooms.
    pub async fn watch_backend(&self) {
        let mut interval = tokio::time::interval(limits::TICK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.check_health().await;
        }
    }

    /// Pings the backend once; when it answers again after failing, or answers from another
    /// primary than at the last check (a failover, which may have lost the last writes that
    /// had not reached the replica), re-announces every room this node holds and the ends it
    /// knows of.
    pub async fn check_health(&self) {
        let was_healthy = self.shared.healthy.load(Ordering::Relaxed);
        // A ping that hangs (a client reconnecting to a Redis that is away) counts as a
        // failure, as it does for /readyz.
        let store = &self.shared.cluster.store;
        let epoch = store.primary_epoch();
        let ping = tokio::time::timeout(limits::READINESS_TIMEOUT, store.ping());
        let healthy = matches!(ping.await, Ok(Ok(())));
        self.shared.healthy.store(healthy, Ordering::Relaxed);
        if was_healthy && !healthy {
            warn!("backend unreachable; rooms keep running on this node");
        }
        if !healthy {
            return;
        }
        let new_primary = self.shared.epoch.swap(epoch, Ordering::Relaxed) != epoch;
        if was_healthy && !new_primary {
            return;
        }
        let rooms: Vec<_> = lock(&self.shared.rooms).values().cloned().collect();
        for room in rooms {
            room.rebuild().await;
        }
        // The backend may have restarted empty: the ends this node knows of are written
        // again, so that no node that missed one puts the meeting back.
        let ended: Vec<(String, Duration)> = lock(&self.shared.tombstones)
            .iter()
            .map(|(id, at)| (id.clone(), limits::TOMBSTONE_TTL.saturating_sub(at.elapsed())))
            .filter(|(_, left)| !left.is_zero())
            .collect();
        for (id, left) in ended {
            if let Err(e) = self.shared.cluster.store.end(&id, left).await {
                warn!(room = %id, error = %e, "could not write the room's end again");
            }
            // Release what the write opened (with Redis, the room's connection).
            let _ = self.shared.cluster.bus.unsubscribe(&id).await;
        }
        info!("backend reachable again; room records, presence, boards and ends re-announced");
    }

    /// Whether the backend answered at the last check.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Asks the backend now.
    pub async fn check_backend(&self) -> Result<(), BackendError> {
        self.shared.cluster.store.ping().await
    }

    /// Asks the board store now: it can read (an absent board is fine).
    pub async fn check_board_store(&self) -> Result<(), BackendError> {
        let cluster = &self.shared.cluster;
        let result = cluster.boards.load("readinessprobe").await.map(|_| ());
        // Release what the probe opened (with Redis, a connection).
        let _ = cluster.bus.unsubscribe("readinessprobe").await;
        result
    }

    /// Frees an idle persistent room's memory: its board is saved, nobody is connected here.
    /// The next connection loads it again from the store.
    async fn unload(&self, id: &str) {
        let removed = lock(&self.shared.rooms).remove(id);
        if let Some(room) = removed {
            room.gone.store(true, Ordering::Release);
            self.shared.cluster.metrics.set_rooms(self.len());
            let _ = self.shared.cluster.bus.unsubscribe(id).await;
            info!(room = id, "idle room unloaded");
        }
    }

    /// Forgets an ended room, deletes its keys and keeps a tombstone (its id only).
    pub async fn retire(&self, id: &str) {
        let removed = lock(&self.shared.rooms).remove(id);
        if let Some(room) = removed {
            room.gone.store(true, Ordering::Release);
            self.shared.cluster.metrics.set_rooms(self.len());
            {
                let mut tombstones = lock(&self.shared.tombstones);
                tombstones.retain(|_, ended| ended.elapsed() < limits::TOMBSTONE_TTL);
                tombstones.insert(id.to_owned(), Instant::now());
            }
            let cluster = &self.shared.cluster;
            match cluster.store.end(id, limits::TOMBSTONE_TTL).await {
                Ok(()) => info!(room = id, "ended room retired"),
                Err(e) => warn!(room = id, error = %e, "could not delete the room's keys"),
            }
            let _ = cluster.bus.unsubscribe(id).await;
        }
    }

    /// Number of open rooms.
    pub fn len(&self) -> usize {
        lock(&self.shared.rooms).len()
    }

    /// Whether no room is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether `id` has the shape of a room id, so junk never reaches a store lookup or a log line.
pub fn is_room_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A random id for this process, used in presence entries and bus messages.
pub fn random_node_id() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 10).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use balint_proto::room::ClientMessage;

    use super::*;
    use crate::backend::files::FileStore;
    use crate::metrics::Metrics;

    fn rooms(data: &std::path::Path) -> Rooms {
        Rooms::new(Cluster::embedded(
            Arc::new(FileStore::new(data)),
            Metrics::new(),
            "timers".into(),
            RoomOptions {
                outbound_queue: 64,
                reconnect_grace: Duration::from_secs(1),
                empty_grace: Duration::from_secs(2),
                max_length: Duration::from_secs(6 * 3600),
                max_members: 50,
                max_board_bytes: 1 << 20,
                max_rooms: 10_000,
                idle_unload: Duration::from_secs(1),
                link_ttl: Duration::from_secs(3600),
            },
        ))
    }

    /// The number of rooms woken so far, from the metrics.
    fn wakes(rooms: &Rooms) -> u64 {
        let text = rooms.shared.cluster.metrics.encode();
        let line = text.lines().find(|l| l.starts_with("balint_room_wakes_total ")).expect("the wakes metric");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    fn ephemeral() -> RoomSettings {
        RoomSettings { ephemeral: true, ..RoomSettings::default() }
    }

    /// A member who said hello in `room`.
    async fn join(rooms: &Rooms, room: &Arc<Room>) -> ConnId {
        let conn = rooms.next_conn_id();
        let subscription = room.connect(Role::Member, 0, "ada".into(), Outlet::detached(conn));
        assert!(subscription.is_some());
        room.handle_text(conn, ClientMessage::Hello { resume: None }, rooms.now_ms()).await;
        conn
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not within 10 s");
    }

    #[tokio::test]
    async fn an_idle_node_wakes_no_room_and_a_due_one_at_its_time() {
        let data = tempfile::tempdir().unwrap();
        let rooms = rooms(data.path());
        let timers = tokio::spawn({
            let rooms = rooms.clone();
            async move { rooms.run_timers(Duration::from_secs(30)).await }
        });
        // A thousand rooms open on this node with nobody in them, and ten with a member
        // connected who does nothing.
        for _ in 0..1_000 {
            rooms.create(ephemeral()).await.unwrap();
        }
        let mut quiet = Vec::new();
        for _ in 0..10 {
            let room = rooms.create(ephemeral()).await.unwrap();
            join(&rooms, &room).await;
            quiet.push(room);
        }
        // The ten meetings record their start, at once; then nothing is due for hours (their
        // maximum length) and nothing else waits in the queue at all.
        eventually("the starts recorded", || wakes(&rooms) == 10).await;
        let queued = rooms.shared.timers.len();
        assert!(queued <= 10 + 10, "{queued} entries for 10 rooms with a timer");
        let due_within_an_hour = rooms.shared.timers.earliest().is_some_and(|at| at < rooms.now_ms() + 3_600_000);
        assert!(!due_within_an_hour, "nothing is due for an hour");

        // A member leaves one of the rooms: it is woken when her grace runs out (1 s), then
        // when the empty meeting's runs out (2 s), and retired.
        let room = rooms.create(ephemeral()).await.unwrap();
        let conn = join(&rooms, &room).await;
        eventually("the start recorded", || wakes(&rooms) == 11).await;
        room.leave(conn).await;
        eventually("the meeting ended and retired", || room.is_ended() && rooms.len() == 1_010).await;
        let woken = wakes(&rooms);
        assert!((13..=16).contains(&woken), "{woken} wakes: 11, then the grace, the empty grace and the end");

        // Two more seconds: nobody else was woken.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(wakes(&rooms), woken, "a room with nothing due was woken");
        timers.abort();
    }

    #[tokio::test]
    async fn a_room_claimed_for_a_tick_is_woken_once() {
        let data = tempfile::tempdir().unwrap();
        let rooms = rooms(data.path());
        let room = rooms.create(ephemeral()).await.unwrap();
        join(&rooms, &room).await;
        // The meeting's start is due at once; the timer queue takes the room for its tick.
        let claimed = rooms.shared.timers.take_due(rooms.now_ms());
        assert_eq!(claimed.len(), 1, "the room is due to record its start");
        // Before the tick starts (it waits for the room's thread), the room takes another
        // step, which still finds the start due: the room is not queued for it again.
        room.mark_resync();
        room.handle_text(ConnId(u64::MAX), ClientMessage::Hello { resume: None }, rooms.now_ms()).await;
        let far = rooms.now_ms() + 60_000;
        assert!(rooms.shared.timers.take_due(far).is_empty(), "queued again while its tick was pending");
        // The tick records the start and puts the room back for its next due time, hours away.
        rooms.wake(claimed.into_iter().next().unwrap(), Duration::from_secs(30)).await;
        assert_eq!(wakes(&rooms), 1);
        assert!(rooms.shared.timers.take_due(far).is_empty(), "nothing is due within a minute");
        let next = rooms.shared.timers.earliest().expect("the meeting's maximum length is due");
        assert!(next > rooms.now_ms() + 3_600_000, "due {} ms from now", next - rooms.now_ms());
    }

    #[tokio::test]
    async fn a_persistent_room_nobody_joins_leaves_memory_when_it_is_due_to() {
        let data = tempfile::tempdir().unwrap();
        let rooms = rooms(data.path());
        let timers = tokio::spawn({
            let rooms = rooms.clone();
            async move { rooms.run_timers(Duration::from_secs(30)).await }
        });
        let set_up = rooms.set_up(RoomSettings { ephemeral: false, ..RoomSettings::default() }).await.unwrap();
        assert_eq!(rooms.len(), 0, "a room set up ahead is held by no node");
        let Lookup::Live(room) = rooms.lookup(set_up.id()).await.unwrap() else { panic!("the room opens") };
        assert_eq!(rooms.len(), 1);
        // Nobody connects: the idle unload (1 s) is due, and the room leaves memory then.
        eventually("unloaded", || rooms.is_empty()).await;
        assert_eq!(wakes(&rooms), 1, "woken once, when the unload was due");
        drop(room);
        assert!(matches!(rooms.lookup(set_up.id()).await.unwrap(), Lookup::Live(_)), "it opens again");
        timers.abort();
    }
}
