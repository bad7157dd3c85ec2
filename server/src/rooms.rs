//! The room registry and the driver around each room's core.
//!
//! [`Rooms`] is a cheap-clone handle to every room this node serves. Each [`Room`] keeps its
//! sans-IO core (board and meeting) behind a std `Mutex` and a broadcast feed of
//! already-encoded frames. The lock is never held across an `.await`: a caller locks, feeds
//! the core, publishes its output to the feed and unlocks; backend calls happen outside.
//! Publishing under the lock gives every subscriber one order of frames.
//!
//! A std `Mutex` rather than tokio's, because no critical section awaits (the mini-redis
//! `db.rs` reasoning): it is cheaper, and clippy's `await_holding_lock` keeps it that way.
//!
//! Across nodes:
//! - the meeting's shared state is the room's record in the [`RoomStore`], changed by
//!   plan → compare-and-set → install, retried on conflict; every write is announced on the
//!   room's bus channel and installed by every node;
//! - board updates and awareness are applied locally, then published once per node on the
//!   bus; a node that opens a room asks the others for what it lacks (step 1 / step 2 over the
//!   bus);
//! - presence is one entry per member and node, refreshed every
//!   [`limits::PRESENCE_HEARTBEAT`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use balint_proto::close;
use balint_proto::room::{ClientMessage, ErrorCode, Role, ServerMessage, Template};
use balint_proto::rules::{Reason, Refusal};
use balint_proto::sync::{self, FrameError};
use bytes::Bytes;
use rand::distributions::{Alphanumeric, DistString};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};
use yrs::updates::decoder::Decode;
use yrs::StateVector;

use crate::backend::{BackendError, BoardStore, Bus, Presence, RoomStore, StoredBoard};
use crate::fanout::{self, Envelope};
use crate::limits;
use crate::room::board::{Board, Relay};
use crate::room::meeting::{Audience, Meeting, MeetingSettings, Output as MeetingOutput, Plan, Shared};
use crate::room::ConnId;

/// What a room is created with.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RoomSettings {
    /// Shown to members; never logged.
    pub title: Option<String>,
    /// Whether nothing of the meeting outlives it.
    pub ephemeral: bool,
    /// The session template.
    pub template: Template,
    /// Whether newcomers wait for a leader to admit them.
    pub lobby: bool,
    /// The room's link generation (0 at creation; raised when a leader renews the links).
    /// Settings saved before generations existed read as 0.
    #[serde(default)]
    pub link_generation: u64,
}

/// A frame on a room's feed, encoded once and shared by every recipient.
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

/// The result of feeding one binary frame.
#[derive(Debug, Default)]
pub struct BinaryOutcome {
    /// Frames for the sender only.
    pub reply: Vec<Bytes>,
    /// The frame tried to change the board without the right to; the reason, for an `error`
    /// to a client that speaks the room protocol.
    pub refused: Option<Refusal>,
    /// The frame's board change would have passed the board's size limit and was refused.
    pub board_full: bool,
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
}

impl Cluster {
    /// The safety-net expiry of a room's record when written with `shared`: a day once anyone
    /// has joined (renewed by every write, so a record with names in it outlives its meeting
    /// by a day at most), and as long as the links before that.
    fn record_ttl(&self, shared: &Shared) -> Duration {
        if shared.has_started() {
            limits::RECORD_TTL
        } else {
            limits::RECORD_TTL.max(self.options.link_ttl)
        }
    }
}

/// Settings every room of a node shares.
#[derive(Debug, Clone)]
pub struct RoomOptions {
    /// Frames a connection may fall behind before it is closed as too slow.
    pub outbound_queue: usize,
    /// How long a dropped member keeps their place.
    pub reconnect_grace: Duration,
    /// How long an ephemeral meeting may stay empty before it ends.
    pub empty_grace: Duration,
    /// The longest an ephemeral meeting may last.
    pub max_length: Duration,
    /// The most members a room holds.
    pub max_members: usize,
    /// The most a board may grow to, in bytes.
    pub max_board_bytes: usize,
    /// The most rooms this node serves at once.
    pub max_rooms: usize,
    /// How long a persistent room stays in memory with nobody connected.
    pub idle_unload: Duration,
    /// How long the links of a new room stay valid: a room nobody has joined yet keeps its
    /// record that long, so that a meeting set up days ahead still opens on every node.
    pub link_ttl: Duration,
}

struct RoomCore {
    board: Board,
    meeting: Meeting,
    ended: bool,
    last_heartbeat_ms: u64,
    /// For a persistent room: when the oldest change not yet saved was made.
    unsaved_since_ms: Option<u64>,
    /// When the board last changed.
    changed_ms: u64,
    /// Since when no connection of this node has been in the room.
    idle_since_ms: Option<u64>,
    /// For a persistent room: the settings as last saved (or loaded). When the meeting's
    /// settings differ (a leader turned the lobby on, renewed the links), they are saved at
    /// the next tick, whether or not the board changed.
    saved_settings: Option<Bytes>,
}

impl RoomCore {
    fn board_changed(&mut self, now_ms: u64) {
        if !self.meeting.shared().is_ephemeral() {
            self.unsaved_since_ms.get_or_insert(now_ms);
            self.changed_ms = now_ms;
        }
    }
}

/// One room on this node.
pub struct Room {
    id: String,
    core: Mutex<RoomCore>,
    feed: broadcast::Sender<Outbound>,
    cluster: Cluster,
    /// Set when a bus message may have been lost (a failed publish, a dropped subscription):
    /// the next tick asks the other nodes to exchange what each lacks.
    resync: AtomicBool,
    /// When each member was last seen in another node's presence entries. A member missing
    /// from one reading is not gone yet: after a Redis restart, entries come back only with
    /// the next heartbeats.
    seen_elsewhere: Mutex<HashMap<String, u64>>,
    /// Set when a presence reading failed: the store may lose entries while it is away.
    presence_lost: AtomicBool,
    /// Until when (ms) presence readings may still miss other nodes' members after an outage.
    presence_settles_ms: AtomicU64,
    /// What this node has for the other nodes, on its way to the bus; none with one node.
    outbox: Option<Outbox>,
}

/// The queue in front of a room's publisher task ([`publish_batches`]).
struct Outbox {
    queue: mpsc::Sender<Envelope>,
    /// Set by the publisher when a publish failed; the room resyncs at its next tick.
    failed: Arc<AtomicBool>,
}

impl Outbox {
    /// Starts the room's publisher task; it ends when the room (the sender) goes.
    fn start(room: &str, cluster: &Cluster) -> Self {
        let (queue, pending) = mpsc::channel(limits::BUS_QUEUE_MESSAGES);
        let failed = Arc::new(AtomicBool::new(false));
        tokio::spawn(publish_batches(room.to_owned(), cluster.clone(), pending, failed.clone()));
        Outbox { queue, failed }
    }
}

/// Publishes a room's queued envelopes in order: one bus message for whatever is queued when
/// the previous publish returns (up to [`limits::BUS_BATCH_MESSAGES`] envelopes and
/// [`limits::BUS_BATCH_BYTES`]), so a busy room costs one Redis command per batch, not one per
/// update, and no member waits for Redis.
async fn publish_batches(
    room: String,
    cluster: Cluster,
    mut pending: mpsc::Receiver<Envelope>,
    failed: Arc<AtomicBool>,
) {
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
                failed.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Room {
    fn new(id: String, meeting: Meeting, cluster: Cluster) -> Self {
        let (feed, _) = broadcast::channel(cluster.options.outbound_queue.max(1));
        let outbox = cluster.bus.reaches_other_nodes().then(|| Outbox::start(&id, &cluster));
        let core = RoomCore {
            board: Board::with_limit(cluster.options.max_board_bytes),
            meeting,
            ended: false,
            last_heartbeat_ms: 0,
            unsaved_since_ms: None,
            changed_ms: 0,
            idle_since_ms: None,
            saved_settings: None,
        };
        Room {
            id,
            core: Mutex::new(core),
            feed,
            cluster,
            resync: AtomicBool::new(false),
            seen_elsewhere: Mutex::default(),
            presence_lost: AtomicBool::new(false),
            presence_settles_ms: AtomicU64::new(0),
            outbox,
        }
    }

    /// The room id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn lock(&self) -> MutexGuard<'_, RoomCore> {
        // A panic while holding this lock would be a bug in the core; the state it guards is
        // still the best copy of the board there is, so keep serving it.
        lock(&self.core)
    }

    /// Whether the meeting has ended.
    pub fn is_ended(&self) -> bool {
        self.lock().ended
    }

    /// Whether this is a persistent room with nobody connected here for a while
    /// ([`RoomOptions::idle_unload`]) and nothing unsaved: its memory can go.
    pub fn is_idle(&self, now_ms: u64) -> bool {
        let mut core = self.lock();
        if core.meeting.shared().is_ephemeral() || core.unsaved_since_ms.is_some() || !core.meeting.has_no_connections()
        {
            core.idle_since_ms = None;
            return false;
        }
        let since = *core.idle_since_ms.get_or_insert(now_ms);
        now_ms.saturating_sub(since) >= self.cluster.options.idle_unload.as_millis() as u64
    }

    /// Whether the meeting is ephemeral.
    pub fn is_ephemeral(&self) -> bool {
        self.lock().meeting.shared().is_ephemeral()
    }

    /// The room state as a leader sees it.
    pub fn leader_view(&self) -> balint_proto::room::RoomState {
        self.lock().meeting.state(true)
    }

    /// Registers a connection that passed the link check (a link of `role` and link
    /// generation `generation`) and subscribes it to the feed. It becomes a member with its
    /// first message.
    pub fn connect(
        &self,
        conn: ConnId,
        role: Role,
        generation: u64,
        name: String,
    ) -> Option<broadcast::Receiver<Outbound>> {
        let mut core = self.lock();
        if core.ended {
            return None;
        }
        core.meeting.connect_link(conn, role, generation, name);
        Some(self.feed.subscribe())
    }

    /// The room's current link generation, for links issued now.
    pub fn link_generation(&self) -> u64 {
        self.lock().meeting.shared().link_generation()
    }

    /// Renews the room's links: raises its link generation (in the record, by
    /// compare-and-set, so every node agrees) and, for a persistent room, saves it with the
    /// settings. Returns the new generation; `None` when the store could not be written.
    pub async fn renew_links(&self, now_ms: u64) -> Option<u64> {
        let before = self.link_generation();
        self.commit(None, false, Meeting::plan_renew_links).await;
        let after = self.link_generation();
        if after <= before {
            return None;
        }
        self.save(now_ms, false).await;
        info!(room = %self.id, generation = after, "links renewed");
        Some(after)
    }

    /// Feeds a binary frame from `conn` to the board and publishes what it produced, here and
    /// to the other nodes.
    pub async fn handle_binary(&self, conn: ConnId, frame: &[u8], now_ms: u64) -> Result<BinaryOutcome, FrameError> {
        let mut reply = Vec::new();
        if !self.lock().meeting.is_bound(conn) {
            // A stock Yjs client: its first frame makes it a member, named from the link. Its
            // greeting goes out before the answer to this frame, as y-websocket's server does.
            let greet = self.commit(Some(conn), true, |m| m.plan_bind(conn, false, None)).await;
            if greet {
                reply = self.lock().board.greeting();
            }
        }
        let board_full;
        let refused = {
            let mut guard = self.lock();
            let core = &mut *guard;
            if !core.meeting.is_connected(conn) {
                // Removed by a leader; its close is on the way.
                return Ok(BinaryOutcome::default());
            }
            if !core.meeting.can_read(conn) {
                // Waiting in the lobby (or not yet bound, when the store was unavailable):
                // nothing of the board goes either way. A malformed frame is still refused.
                sync::decode_frame(frame)?;
                return Ok(BinaryOutcome { reply, refused: None, board_full: false });
            }
            let permission = core.meeting.can_write(conn);
            let effects = core.board.handle_frame(conn, frame, permission.is_ok(), now_ms)?;
            if effects.relay.iter().any(|r| matches!(r, Relay::Update(_))) {
                core.board_changed(now_ms);
            }
            if !effects.broadcast.is_empty() {
                let audience = core.meeting.board_audience();
                for frame in &effects.broadcast {
                    self.publish(Some(conn), audience.clone(), Message::Binary(frame.clone()));
                }
            }
            board_full = effects.board_full;
            // Queued for the bus under the lock: other nodes get this node's changes in the
            // order they were applied here.
            for relay in effects.relay {
                self.send_bus(match relay {
                    Relay::Update(update) => Envelope::Update(update),
                    Relay::Awareness(payload) => Envelope::Awareness(payload),
                });
            }
            reply.extend(effects.reply);
            match permission {
                Err(reason) if effects.write_refused && core.meeting.said_hello(conn) => Some(reason),
                _ => None,
            }
        };
        Ok(BinaryOutcome { reply, refused, board_full })
    }

    /// Feeds a room-protocol message from `conn` to the meeting.
    pub async fn handle_text(&self, conn: ConnId, message: ClientMessage, now_ms: u64) {
        self.commit(Some(conn), false, |m| m.plan_command(conn, message.clone(), now_ms)).await;
    }

    /// Unregisters a connection, removes its awareness states for everyone and, if it was the
    /// member's last connection anywhere, starts their grace period.
    pub async fn leave(&self, conn: ConnId, now_ms: u64) {
        let last_here = {
            let mut guard = self.lock();
            let core = &mut *guard;
            let last_here = core.meeting.forget(conn);
            if let Some(removal) = core.board.leave(conn) {
                self.publish(Some(conn), core.meeting.board_audience(), Message::Binary(removal.frame));
                self.send_bus(Envelope::Awareness(removal.payload));
            }
            last_here
        };
        if let Some(member) = last_here {
            let entry = self.presence_entry(&member);
            if let Err(e) = self.cluster.presence.remove(&self.id, &entry).await {
                warn!(room = %self.id, error = %e, "presence removal failed");
            }
            self.tick_meeting(now_ms, Some(&member)).await;
        }
    }

    /// Runs the room's timers up to `now_ms`: awareness sweep, presence heartbeat, and the
    /// meeting's timers (once in the cluster, by compare-and-set).
    pub async fn tick(&self, now_ms: u64, awareness_timeout: Duration) {
        if self.outbox.as_ref().is_some_and(|o| o.failed.swap(false, Ordering::Relaxed)) {
            self.mark_resync();
        }
        let (heartbeat, waiting) = {
            let mut guard = self.lock();
            let core = &mut *guard;
            if core.ended {
                return;
            }
            if let Some(removal) = core.board.sweep(now_ms, awareness_timeout.as_millis() as u64) {
                self.publish(None, core.meeting.board_audience(), Message::Binary(removal.frame));
                self.send_bus(Envelope::Awareness(removal.payload));
            }
            // After a possible loss (Redis restarted), announce presence again at once.
            let lost = self.resync.load(Ordering::Relaxed);
            let due =
                lost || now_ms.saturating_sub(core.last_heartbeat_ms) >= limits::PRESENCE_HEARTBEAT.as_millis() as u64;
            let heartbeat = due.then(|| {
                core.last_heartbeat_ms = now_ms;
                core.meeting.local_members()
            });
            (heartbeat, !core.board.pending().is_empty())
        };
        if let Some(members) = heartbeat {
            self.heartbeat(&members, now_ms).await;
        }
        self.tick_meeting(now_ms, None).await;
        if self.resync.swap(false, Ordering::Relaxed) {
            self.request_catch_up(true);
        } else if waiting {
            // Updates from other nodes arrived ahead of what they build on and are still held
            // back a tick later: ask the other nodes for what this one lacks.
            self.request_catch_up(false);
        }
        self.save(now_ms, false).await;
    }

    /// Saves a persistent room's board when it is due: [`limits::SAVE_DEBOUNCE`] after the
    /// last change, and at most [`limits::SAVE_MAX_DELAY`] after the first unsaved one. With
    /// `force`, saves whatever is unsaved now (at shutdown).
    ///
    /// Changed settings are saved at once (with the board as it is).
    pub async fn save(&self, now_ms: u64, force: bool) {
        let snapshot = {
            let core = self.lock();
            if core.ended || core.meeting.shared().is_ephemeral() {
                return;
            }
            let settings = settings_json(core.meeting.shared());
            let settings_changed = core.saved_settings.as_ref() != Some(&settings);
            let board_due = core.unsaved_since_ms.is_some_and(|since| {
                let quiet = now_ms.saturating_sub(core.changed_ms) >= limits::SAVE_DEBOUNCE.as_millis() as u64;
                let overdue = now_ms.saturating_sub(since) >= limits::SAVE_MAX_DELAY.as_millis() as u64;
                force || quiet || overdue
            });
            if !(settings_changed || board_due) {
                return;
            }
            let stored = StoredBoard { settings: settings.clone(), board: Bytes::from(core.board.encode_state()) };
            (stored, core.changed_ms, settings)
        };
        let (stored, changed_ms, settings) = snapshot;
        match self.cluster.boards.save(&self.id, stored).await {
            Ok(()) => {
                let mut core = self.lock();
                if core.changed_ms == changed_ms {
                    core.unsaved_since_ms = None;
                }
                core.saved_settings = Some(settings);
                debug!(room = %self.id, "board saved");
            }
            Err(e) => {
                warn!(room = %self.id, error = %e, "board save failed; will retry");
                self.cluster.metrics.backend_error();
            }
        }
    }

    /// Ends the meeting for everyone, for `reason`.
    pub async fn end(&self, reason: &str) {
        self.commit(None, false, |m| m.plan_end(reason)).await;
    }

    /// The board as Markdown, for a leader's export.
    pub fn export_markdown(&self) -> String {
        let core = self.lock();
        let shared = core.meeting.shared();
        let phases: Vec<String> = shared
            .template()
            .phases()
            .iter()
            .map(|p| serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default())
            .collect();
        let phases: Vec<&str> = phases.iter().map(String::as_str).collect();
        core.board.to_markdown(shared.title(), &phases)
    }

    /// Refreshes the presence entries of this node's members, in one backend call.
    async fn heartbeat(&self, members: &[String], now_ms: u64) {
        let entries: Vec<String> = members.iter().map(|m| self.presence_entry(m)).collect();
        if let Err(e) = self.cluster.presence.heartbeat(&self.id, &entries, now_ms, limits::PRESENCE_TTL).await {
            debug!(room = %self.id, error = %e, "presence heartbeat failed");
        }
    }

    /// Runs the meeting's timers. A member counts as connected elsewhere when another node's
    /// presence entry names them, or named them within an entry's lifetime; `leaving` (whose last
    /// connection here just closed) counts only on a current entry.
    async fn tick_meeting(&self, now_ms: u64, leaving: Option<&str>) {
        let live = match self.cluster.presence.live(&self.id, now_ms).await {
            Ok(live) => live,
            // Without presence, nobody is marked gone: skip this round.
            Err(_) => {
                self.presence_lost.store(true, Ordering::Relaxed);
                return;
            }
        };
        if self.presence_lost.swap(false, Ordering::Relaxed) {
            self.settle_presence(now_ms);
        }
        // Right after an outage, the store may have lost other nodes' entries, and they come
        // back only with those nodes' next heartbeats: until then, nobody present is marked
        // gone (those already gone can still come back, and their grace still runs).
        let settling = now_ms < self.presence_settles_ms.load(Ordering::Relaxed);
        let node_suffix = format!("@{}", self.cluster.node);
        let elsewhere: HashSet<String> = live
            .into_iter()
            .filter(|e| !e.ends_with(&node_suffix))
            .filter_map(|e| e.split_once('@').map(|(m, _)| m.to_owned()))
            .collect();
        let recently: HashSet<String> = {
            let mut seen = lock(&self.seen_elsewhere);
            for member in &elsewhere {
                seen.insert(member.clone(), now_ms);
            }
            // As long as an entry lives: a member whose node died shows as reconnecting after
            // the same delay as one whose entry Redis lost.
            let window = limits::PRESENCE_TTL.as_millis() as u64;
            seen.retain(|_, at| now_ms.saturating_sub(*at) < window);
            seen.keys().filter(|m| Some(m.as_str()) != leaving).cloned().collect()
        };
        self.commit(None, false, |m| {
            m.plan_tick(now_ms, |id| {
                elsewhere.contains(id) || recently.contains(id) || (settling && m.shared().is_present(id))
            })
        })
        .await;
    }

    fn presence_entry(&self, member: &str) -> String {
        format!("{member}@{}", self.cluster.node)
    }

    /// Plans a change with `plan`, writes it by compare-and-set (retrying on the fresh state
    /// after a conflict) and installs it. `conn` is the connection that asked, told when the
    /// store is unavailable. With `greet_inline`, its board greeting is left to the caller and
    /// the return value says whether there is one.
    async fn commit(&self, conn: Option<ConnId>, greet_inline: bool, plan: impl Fn(&Meeting) -> Plan) -> bool {
        let inline = if greet_inline { conn } else { None };
        for _ in 0..limits::CAS_ATTEMPTS {
            let (version, planned) = {
                let core = self.lock();
                if core.ended {
                    return false;
                }
                (core.meeting.version(), plan(&core.meeting))
            };
            let Plan { next, binding, immediate } = planned;
            let Some(next) = next else {
                let mut guard = self.lock();
                let outputs = guard.meeting.install(version, None, binding);
                return self.apply(&mut guard, immediate.into_iter().chain(outputs).collect(), inline);
            };
            let ttl = self.cluster.record_ttl(&next);
            let record = match serde_json::to_vec(&next) {
                Ok(record) => Bytes::from(record),
                Err(e) => {
                    warn!(room = %self.id, error = %e, "room record did not serialize");
                    return false;
                }
            };
            if let Some(binding) = &binding {
                // Announce the member here before the write, so that no node's timer sees a
                // member without presence.
                let entry = [self.presence_entry(binding.member())];
                let _ =
                    self.cluster.presence.heartbeat(&self.id, &entry, crate::unix_now_ms(), limits::PRESENCE_TTL).await;
            }
            let announce =
                fanout::encode(&self.cluster.node, &Envelope::State { version: version + 1, record: record.clone() });
            match self.cluster.store.compare_and_set(&self.id, version, record, announce, ttl).await {
                Ok(true) => {
                    let mut guard = self.lock();
                    let outputs = guard.meeting.install(version + 1, Some(next), binding);
                    return self.apply(&mut guard, immediate.into_iter().chain(outputs).collect(), inline);
                }
                Ok(false) => self.reload().await,
                Err(e) => {
                    warn!(room = %self.id, error = %e, "room store unavailable");
                    self.cluster.metrics.backend_error();
                    if let Some(conn) = conn {
                        let mut guard = self.lock();
                        let error = ServerMessage::refused(Refusal::new(ErrorCode::Unavailable, Reason::Unavailable));
                        if guard.meeting.said_hello(conn) {
                            self.apply(&mut guard, vec![MeetingOutput::Send(Audience::one(conn), error)], None);
                        }
                    }
                    return false;
                }
            }
        }
        warn!(room = %self.id, "gave up after repeated write conflicts");
        false
    }

    /// Loads the stored record and installs it if it is newer than ours. Puts ours back if
    /// the store lost it.
    async fn reload(&self) {
        match self.cluster.store.load(&self.id).await {
            Ok(Some(stored)) => match serde_json::from_slice::<Shared>(&stored.record) {
                Ok(shared) => self.install_remote(stored.version, shared),
                Err(_) => warn!(room = %self.id, "stored room record did not decode"),
            },
            Ok(None) => self.restore().await,
            Err(e) => warn!(room = %self.id, error = %e, "room store unavailable"),
        }
    }

    /// Puts this node's copy of the record back into the store, after Redis lost its data.
    pub async fn restore(&self) {
        let (version, record, ttl) = {
            let core = self.lock();
            if core.ended {
                return;
            }
            (
                core.meeting.version(),
                serde_json::to_vec(core.meeting.shared()),
                self.cluster.record_ttl(core.meeting.shared()),
            )
        };
        let Ok(record) = record else { return };
        match self.cluster.store.restore(&self.id, version, Bytes::from(record), ttl).await {
            Ok(true) => info!(room = %self.id, version, "room record restored"),
            Ok(false) => {}
            Err(e) => warn!(room = %self.id, error = %e, "room record restore failed"),
        }
    }

    /// Gives every node one heartbeat (and a tick) to re-announce its members before a
    /// missing presence entry counts.
    fn settle_presence(&self, now_ms: u64) {
        let window = (limits::PRESENCE_HEARTBEAT + limits::TICK_INTERVAL).as_millis() as u64;
        self.presence_settles_ms.fetch_max(now_ms + window, Ordering::Relaxed);
    }

    /// Re-announces everything this node holds after the backend came back: the record,
    /// presence, and a catch-up request for the board.
    pub async fn rebuild(&self, now_ms: u64) {
        self.settle_presence(now_ms);
        self.restore().await;
        let members = {
            let mut core = self.lock();
            core.last_heartbeat_ms = now_ms;
            core.meeting.local_members()
        };
        self.heartbeat(&members, now_ms).await;
        self.request_catch_up(true);
        self.reload().await;
    }

    fn install_remote(&self, version: u64, shared: Shared) {
        let mut guard = self.lock();
        let outputs = guard.meeting.install(version, Some(shared), None);
        self.apply(&mut guard, outputs, None);
    }

    /// Asks the other nodes for whatever of the board this node lacks (and, with `mutual`,
    /// has them ask back for what they lack).
    pub fn request_catch_up(&self, mutual: bool) {
        use yrs::updates::encoder::Encode;
        use yrs::{ReadTxn, Transact};
        if self.outbox.is_none() {
            // One node: there is nobody to ask.
            return;
        }
        let core = self.lock();
        let state_vector = Bytes::from(core.board.doc().transact().state_vector().encode_v1());
        self.send_bus(Envelope::SyncRequest { state_vector, mutual });
    }

    /// Notes that a bus message may have been lost (a failed publish, a dropped connection to
    /// the backend): the next tick resynchronizes, and the first presence reading after it
    /// starts a settling window, since the backend may have lost other nodes' entries too.
    pub fn mark_resync(&self) {
        self.resync.store(true, Ordering::Relaxed);
        self.presence_lost.store(true, Ordering::Relaxed);
    }

    /// Handles a message from another node.
    pub async fn on_bus(&self, from: &str, envelope: Envelope) {
        match envelope {
            Envelope::Update(update) => {
                let mut guard = self.lock();
                let core = &mut *guard;
                if let Ok(frame) = core.board.apply_remote(&update) {
                    core.board_changed(crate::unix_now_ms());
                    self.publish(None, core.meeting.board_audience(), Message::Binary(frame));
                }
            }
            Envelope::Awareness(payload) => {
                let mut guard = self.lock();
                let core = &mut *guard;
                if let Some(frame) = core.board.apply_remote_awareness(&payload, crate::unix_now_ms()) {
                    self.publish(None, core.meeting.board_audience(), Message::Binary(frame));
                }
            }
            Envelope::SyncRequest { state_vector, mutual } => {
                let Ok(remote) = StateVector::decode_v1(&state_vector) else { return };
                {
                    let core = self.lock();
                    let diff = Bytes::from(core.board.diff(&remote));
                    for update in std::iter::once(diff).chain(core.board.pending().iter().cloned()) {
                        self.send_bus(Envelope::SyncReply { to: from.to_owned(), update });
                    }
                }
                if mutual {
                    self.request_catch_up(false);
                }
            }
            Envelope::SyncReply { to, update } if *to == *self.cluster.node => {
                let mut guard = self.lock();
                let core = &mut *guard;
                if let Ok(frame) = core.board.apply_remote(&update) {
                    core.board_changed(crate::unix_now_ms());
                    self.publish(None, core.meeting.board_audience(), Message::Binary(frame));
                }
            }
            Envelope::SyncReply { .. } => {}
            Envelope::State { version, record } => match serde_json::from_slice::<Shared>(&record) {
                Ok(shared) => self.install_remote(version, shared),
                Err(_) => warn!(room = %self.id, "announced room record did not decode"),
            },
        }
    }

    /// Queues `envelope` for the other nodes. It never waits: the room's publisher task sends
    /// what is queued, several envelopes per bus message when they pile up. If the queue is
    /// full (the backend is away or slow), the envelope is dropped and the room resyncs at
    /// its next tick, so the other nodes still get the change.
    fn send_bus(&self, envelope: Envelope) {
        let Some(outbox) = &self.outbox else { return };
        if outbox.queue.try_send(envelope).is_err() {
            self.cluster.metrics.backend_error();
            if !self.resync.load(Ordering::Relaxed) {
                warn!(room = %self.id, "bus queue full: the other nodes will catch up at the next tick");
            }
            self.mark_resync();
        }
    }

    /// Carries the meeting's outputs to the feed, in order. Returns whether `greeted` was
    /// greeted into the board (its greeting is then left to the caller, to go out inline).
    fn apply(&self, core: &mut RoomCore, outputs: Vec<MeetingOutput>, greeted: Option<ConnId>) -> bool {
        let mut inline_greeting = false;
        for output in outputs {
            match output {
                MeetingOutput::Send(audience, message) => {
                    self.publish(None, audience, Message::Text(message.to_json().into()));
                }
                MeetingOutput::Greet { conn, full } => {
                    if Some(conn) == greeted && !full {
                        inline_greeting = true;
                        continue;
                    }
                    let audience = Audience::one(conn);
                    for frame in core.board.greeting() {
                        self.publish(None, audience.clone(), Message::Binary(frame));
                    }
                    if full {
                        let everything = core.board.whole_board(crate::unix_now_ms());
                        self.publish(None, audience.clone(), Message::Binary(everything));
                        for held in core.board.pending() {
                            self.publish(None, audience.clone(), Message::Binary(sync::encode_update(held)));
                        }
                    }
                }
                MeetingOutput::Close { conn, code, reason } => {
                    self.publish(None, Audience::one(conn), close_message(code, reason));
                }
                MeetingOutput::End { reason } => {
                    info!(room = %self.id, reason = %reason, "meeting ended");
                    let ended = ServerMessage::Ended { reason };
                    let hello = core.meeting.everyone_with_hello();
                    self.publish(None, Audience::of(hello), Message::Text(ended.to_json().into()));
                    self.publish(
                        None,
                        core.meeting.everyone(),
                        close_message(close::MEETING_ENDED, "this meeting has ended"),
                    );
                    core.ended = true;
                    // The board and its history go now; nothing else holds them.
                    core.board = Board::with_limit(0);
                }
            }
        }
        inline_greeting
    }

    fn publish(&self, origin: Option<ConnId>, audience: Audience, message: Message) {
        // An error only means nobody is subscribed right now, which is fine.
        let _ = self.feed.send(Outbound { origin, audience, message, published: Instant::now() });
    }
}

/// The settings of the meeting `shared`, as a persistent room saves them with its board: every
/// setting a leader can change that must outlive a restart.
fn settings_json(shared: &Shared) -> Bytes {
    let settings = RoomSettings {
        title: shared.title().map(str::to_owned),
        ephemeral: shared.is_ephemeral(),
        template: shared.template(),
        lobby: shared.lobby(),
        link_generation: shared.link_generation(),
    };
    Bytes::from(serde_json::to_vec(&settings).unwrap_or_default())
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))
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
            }),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.shared.cluster.node
    }

    /// Whether this node serves as many rooms as it may.
    pub fn is_full(&self) -> bool {
        self.len() >= self.shared.cluster.options.max_rooms
    }

    /// Creates a room with a fresh random id.
    pub async fn create(&self, settings: RoomSettings) -> Result<Arc<Room>, BackendError> {
        let cluster = &self.shared.cluster;
        let id = Alphanumeric.sample_string(&mut rand::thread_rng(), 16).to_ascii_lowercase();
        let meeting = self.new_meeting(&settings);
        let record = serde_json::to_vec(meeting.shared()).map_err(|_| BackendError::Corrupt)?;
        let persistent = !settings.ephemeral;
        let stored_settings = Bytes::from(serde_json::to_vec(&settings).map_err(|_| BackendError::Corrupt)?);
        cluster.store.create(&id, Bytes::from(record), cluster.record_ttl(meeting.shared())).await?;
        if persistent {
            // The room exists for good from now on, even if nobody writes before a restart.
            let empty = Bytes::from(Board::new().encode_state());
            cluster.boards.save(&id, StoredBoard { settings: stored_settings.clone(), board: empty }).await?;
        }
        cluster.bus.subscribe(&id).await?;
        let room = Room::new(id.clone(), meeting, cluster.clone());
        if persistent {
            room.lock().saved_settings = Some(stored_settings);
        }
        let room = Arc::new(room);
        lock(&self.shared.rooms).insert(id, room.clone());
        cluster.metrics.set_rooms(self.len());
        Ok(room)
    }

    fn new_meeting(&self, settings: &RoomSettings) -> Meeting {
        let options = &self.shared.cluster.options;
        Meeting::new(
            MeetingSettings {
                title: settings.title.clone(),
                template: settings.template,
                ephemeral: settings.ephemeral,
                lobby: settings.lobby,
                reconnect_grace_ms: options.reconnect_grace.as_millis() as u64,
                empty_grace_ms: options.empty_grace.as_millis() as u64,
                max_length_ms: options.max_length.as_millis() as u64,
                max_members: options.max_members,
                link_generation: settings.link_generation,
            },
            self.now_ms(),
        )
    }

    /// Saves every persistent board that has unsaved changes, now (at shutdown).
    pub async fn save_all(&self) {
        let now = self.now_ms();
        let rooms: Vec<_> = lock(&self.shared.rooms).values().cloned().collect();
        for room in rooms {
            room.save(now, true).await;
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
        if lock(&self.shared.tombstones).contains_key(id) {
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
            Some(stored) => {
                serde_json::from_slice::<Shared>(&stored.record).map_err(|_| BackendError::Corrupt)?.is_ephemeral()
            }
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
                let settings: RoomSettings =
                    serde_json::from_slice(&board.settings).map_err(|_| BackendError::Corrupt)?;
                let meeting = self.new_meeting(&settings);
                let fresh = Bytes::from(serde_json::to_vec(meeting.shared()).map_err(|_| BackendError::Corrupt)?);
                cluster.store.restore(id, 1, fresh, cluster.record_ttl(meeting.shared())).await?;
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
        let shared: Shared = serde_json::from_slice(&stored.record).map_err(|_| BackendError::Corrupt)?;
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
            let room = Room::new(id.to_owned(), Meeting::from_shared(shared, stored.version), cluster.clone());
            if let Some(board) = &board {
                let mut core = room.lock();
                core.board.load(&board.board).map_err(|_| BackendError::Corrupt)?;
                core.saved_settings = Some(board.settings.clone());
            }
            let room = Arc::new(room);
            rooms.insert(id.to_owned(), room.clone());
            room
        };
        cluster.metrics.set_rooms(self.len());
        info!(room = id, "room opened on this node");
        opened.request_catch_up(false);
        Ok(Lookup::Live(opened))
    }

    /// Delivers a message from the bus to its room.
    pub async fn dispatch(&self, room: &str, payload: Bytes) {
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
                room.on_bus(&from, envelope).await;
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

    /// Runs every room's timers, checks the backend, and rebuilds the backend's view from
    /// this node's rooms when it comes back.
    pub async fn tick(&self, awareness_timeout: Duration) {
        let was_healthy = self.shared.healthy.load(Ordering::Relaxed);
        let healthy = self.shared.cluster.store.ping().await.is_ok();
        self.shared.healthy.store(healthy, Ordering::Relaxed);
        if was_healthy && !healthy {
            warn!("backend unreachable; rooms keep running on this node");
        }
        let now = self.now_ms();
        let rooms: Vec<_> = lock(&self.shared.rooms).values().cloned().collect();
        for room in rooms {
            if healthy && !was_healthy {
                room.rebuild(now).await;
            }
            room.tick(now, awareness_timeout).await;
            if room.is_ended() {
                self.retire(room.id()).await;
            } else if room.is_idle(now) {
                self.unload(room.id()).await;
            }
        }
        if healthy && !was_healthy {
            info!("backend reachable again; room records, presence and boards re-announced");
        }
        lock(&self.shared.tombstones).retain(|_, ended| ended.elapsed() < limits::TOMBSTONE_TTL);
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
        if lock(&self.shared.rooms).remove(id).is_some() {
            self.shared.cluster.metrics.set_rooms(self.len());
            let _ = self.shared.cluster.bus.unsubscribe(id).await;
            info!(room = id, "idle room unloaded");
        }
    }

    /// Forgets an ended room, deletes its keys and keeps a tombstone (its id only).
    pub async fn retire(&self, id: &str) {
        let removed = lock(&self.shared.rooms).remove(id).is_some();
        if removed {
            self.shared.cluster.metrics.set_rooms(self.len());
            lock(&self.shared.tombstones).insert(id.to_owned(), Instant::now());
            let cluster = &self.shared.cluster;
            if let Err(e) = cluster.store.end(id, limits::TOMBSTONE_TTL).await {
                warn!(room = id, error = %e, "could not delete the room's keys");
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
