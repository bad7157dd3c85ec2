//! The room machine: one room on one node, sans-IO.
//!
//! [`RoomMachine`] owns the room's board and meeting and every decision around them that
//! involves the other nodes or the stores: the compare-and-set retry loop, presence tracking
//! with its settling window after an outage, the save schedule of a persistent board, idle
//! unloading, the end and its wipe, and what goes on the bus. It never awaits and never reads
//! a clock: the driver (`crate::rooms`) passes `now` with every input and carries out what
//! the machine asks for.
//!
//! Two kinds of output:
//! - [`Effect`]s, taken with [`RoomMachine::poll_effect`] after every input: frames for this
//!   node's connections and envelopes for the other nodes. They need no answer.
//! - [`Io`] requests, which need one. Work that waits on a store is a [`Job`]: the driver
//!   calls [`RoomMachine::advance`] with the job and the answer to its last request, and gets
//!   either the next request ([`Step::Io`]) or the job's [`Outcome`]. A job holds its own
//!   state, so several jobs (one per connection task, the tick) can be in flight at once, as
//!   several writers to one record are; dropping a job half way is safe.
//!
//! The same machine runs behind the real driver and in the simulated cluster of the tests,
//! with virtual time, a store and a bus that misbehave on purpose.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use balint_proto::close;
use balint_proto::room::{ClientMessage, ErrorCode, Role, RoomState, ServerMessage};
use balint_proto::rules::{Reason, Refusal};
use balint_proto::sealed::{self as sealed_frame, Entry, Kind};
use balint_proto::sync::{self, FrameError};
use bytes::Bytes;
use tracing::{debug, info, warn};
use yrs::updates::decoder::Decode;
use yrs::StateVector;

use super::board::{Board, Relay};
use super::meeting::record;
use super::meeting::{
    Audience, Earliest, Meeting, MeetingDue, MeetingSettings, Output as MeetingOutput, Plan, Shared, TitleChange,
    TitleError,
};
use super::sealed::{Appended, Compacted, Ranges, SealedLog, Summary};
use super::{ConnId, Ids, RoomSettings};
use crate::backend::{BackendError, BackendResult, StoredBoard, Versioned};
use crate::fanout::{self, Envelope};
use crate::limits;

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

impl RoomOptions {
    /// The first state of a meeting created with `settings` at `now_ms`.
    pub fn new_meeting(&self, settings: &RoomSettings, now_ms: u64) -> Meeting {
        Meeting::new(
            MeetingSettings {
                title: settings.title.clone(),
                sealed_title: settings.sealed_title.clone(),
                controls: settings.controls,
                template: settings.template,
                ephemeral: settings.ephemeral,
                lobby: settings.lobby,
                sealed: settings.sealed,
                reconnect_grace_ms: self.reconnect_grace.as_millis() as u64,
                empty_grace_ms: self.empty_grace.as_millis() as u64,
                max_length_ms: self.max_length.as_millis() as u64,
                max_members: self.max_members,
                link_generation: settings.link_generation,
            },
            now_ms,
        )
    }

    /// The safety-net expiry of a room's record when written with `shared`: a day once anyone
    /// has joined (renewed by every write, so a record with names in it outlives its meeting
    /// by a day at most), and as long as the links before that.
    pub fn record_ttl(&self, shared: &Shared) -> Duration {
        if shared.has_started() {
            limits::RECORD_TTL
        } else {
            limits::RECORD_TTL.max(self.link_ttl)
        }
    }
}

/// Where a room machine runs: its node and what it shares with the node's other rooms.
#[derive(Debug, Clone)]
pub struct Node {
    /// This node's id, in presence entries and bus messages.
    pub id: Arc<str>,
    /// Whether other nodes can hear this one. With one node, nothing goes on the bus and
    /// nobody is asked for a catch-up.
    pub clustered: bool,
    /// Settings every room shares.
    pub options: RoomOptions,
    /// Where new member ids and resume tokens come from.
    pub ids: Arc<dyn Ids>,
}

/// A frame for connections of this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A room-protocol message, encoded.
    Text(String),
    /// A y-sync frame.
    Binary(Bytes),
    /// Close the connection with this code and reason.
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
    },
}

/// Output that needs no answer.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Send `frame` to `audience`, except `origin`, whose input produced it.
    Send {
        /// The connection whose input produced the frame; it does not get its own echo.
        origin: Option<ConnId>,
        /// The connections the frame is for.
        audience: Audience,
        /// The frame.
        frame: Frame,
    },
    /// Send an envelope to the other nodes, in order.
    Publish(Envelope),
    /// A store or the bus failed; counted by the driver.
    BackendFailed,
}

/// A request to the stores, answered with an [`Answer`].
#[derive(Debug, Clone)]
pub enum Io {
    /// Write `record` at `version + 1` if the stored record is at `version`, and publish
    /// `announce` with it. Answered with [`Answer::Written`].
    CompareAndSet {
        /// The version the change was planned on.
        version: u64,
        /// The new record.
        record: Bytes,
        /// The bus message that announces it.
        announce: Bytes,
        /// The record's expiry.
        ttl: Duration,
    },
    /// Read the room's record. Answered with [`Answer::Loaded`].
    Load,
    /// Put the record back at `version` unless the store holds one. Answered with
    /// [`Answer::Written`].
    Restore {
        /// This node's version.
        version: u64,
        /// This node's record.
        record: Bytes,
        /// The record's expiry.
        ttl: Duration,
    },
    /// Refresh presence entries. Answered with [`Answer::Finished`].
    Heartbeat {
        /// The entries, `member@node`.
        entries: Vec<String>,
        /// Now.
        now_ms: u64,
        /// How long they live.
        ttl: Duration,
    },
    /// Remove a presence entry. Answered with [`Answer::Finished`].
    RemovePresence {
        /// The entry, `member@node`.
        entry: String,
    },
    /// Whether the room's tombstone is stored: it ended. Answered with [`Answer::Ended`].
    IsEnded,
    /// Read the live presence entries. Answered with [`Answer::Live`].
    ReadPresence {
        /// Now.
        now_ms: u64,
    },
    /// Save a persistent room's board and settings. Answered with [`Answer::Finished`].
    Save(StoredBoard),
}

/// The answer to an [`Io`] request.
#[derive(Debug)]
pub enum Answer {
    /// A compare-and-set or a restore: whether it wrote.
    Written(BackendResult<bool>),
    /// A load.
    Loaded(BackendResult<Option<Versioned>>),
    /// A heartbeat, a removal or a save.
    Finished(BackendResult<()>),
    /// A presence reading.
    Live(BackendResult<Vec<String>>),
    /// Whether the room's tombstone is stored.
    Ended(BackendResult<bool>),
}

/// What a job asks next.
#[derive(Debug)]
pub enum Step {
    /// Carry this out and pass the answer to the next [`RoomMachine::advance`].
    Io(Io),
    /// The job is done.
    Done(Outcome),
}

/// What a finished job reports.
#[derive(Debug, Default)]
pub struct Outcome {
    /// For [`Job::binary`]: what the frame produced for its sender, or why it was refused.
    pub binary: Option<Result<BinaryOutcome, FrameError>>,
    /// For [`Job::renew_links`]: the new link generation, if the renewal was written.
    pub renewed: Option<u64>,
    /// Whether the job's change was written (or needed no write).
    pub committed: bool,
}

/// The result of feeding one binary frame.
#[derive(Debug, Default, PartialEq)]
pub struct BinaryOutcome {
    /// Frames for the sender only, before anything else it is sent.
    pub reply: Vec<Bytes>,
    /// The frame tried to change the board without the right to; the reason, for an `error`
    /// to a client that speaks the room protocol.
    pub refused: Option<Refusal>,
    /// The frame's board change would have passed the board's size limit and was refused.
    pub board_full: bool,
}

/// Work that may wait on the stores. Build one, then drive it with [`RoomMachine::advance`].
#[derive(Debug)]
pub struct Job {
    /// What is left to do, in order; the first may be waiting for an answer.
    stages: VecDeque<Stage>,
    outcome: Outcome,
    /// A stock client's first frame bound it, and its greeting goes out with the answer to
    /// that frame.
    greeted_inline: bool,
}

impl Job {
    fn of(stages: impl IntoIterator<Item = Stage>) -> Self {
        Job { stages: stages.into_iter().collect(), outcome: Outcome::default(), greeted_inline: false }
    }

    /// A binary frame from `conn`. A stock Yjs client's first frame makes it a member, named
    /// from its link, and its greeting goes out before the answer to the frame, as
    /// y-websocket's server does.
    pub fn binary(conn: ConnId, frame: Bytes) -> Self {
        Job::of([Stage::BindStock(conn), Stage::Binary { conn, frame }])
    }

    /// A room-protocol message from `conn`, received at `now_ms`.
    pub fn command(conn: ConnId, message: ClientMessage, now_ms: u64) -> Self {
        Job::of([Stage::commit(Intent::Command(conn, message, now_ms), Some(conn))])
    }

    /// The connection `conn` closed.
    pub fn leave(conn: ConnId) -> Self {
        Job::of([Stage::Leave(conn)])
    }

    /// The room's timers: the awareness sweep (states older than `awareness_timeout` go), the
    /// presence heartbeat, the meeting's timers (once in the cluster, by compare-and-set), a
    /// catch-up with the other nodes when needed, and a due save.
    pub fn tick(awareness_timeout: Duration) -> Self {
        Job::of([
            Stage::Sweep { timeout_ms: awareness_timeout.as_millis() as u64 },
            Stage::Heartbeat { forced: false },
            Stage::ReadPresence { leaving: None },
            Stage::CatchUp,
            Stage::Save { force: false },
        ])
    }

    /// Saves a persistent room's unsaved board now, due or not (at shutdown).
    pub fn save_now() -> Self {
        Job::of([Stage::Save { force: true }])
    }

    /// A leader renews the room's links; [`Outcome::renewed`] says the new generation.
    pub fn renew_links() -> Self {
        Job::of([Stage::Renew])
    }

    /// A leader sets the title (checked already against the room with
    /// [`RoomMachine::check_title`]); a persistent room saves it at once.
    pub fn set_title(change: TitleChange) -> Self {
        Job::of([Stage::commit(Intent::SetTitle(change), None), Stage::Save { force: false }])
    }

    /// Ends the meeting for everyone, for `reason`.
    pub fn end(reason: &str) -> Self {
        Job::of([Stage::commit(Intent::End(reason.to_owned()), None)])
    }

    /// The stores answer again after an outage: re-announce the record, presence and the
    /// board, and take what the others wrote meanwhile.
    pub fn rebuild() -> Self {
        Job::of([
            Stage::Settle,
            Stage::Restore { again: false },
            Stage::Heartbeat { forced: true },
            Stage::CatchUpMutual,
            Stage::Reload { again: false },
        ])
    }
}

/// A change to the shared state, planned afresh on every attempt.
#[derive(Debug, Clone)]
enum Intent {
    Command(ConnId, ClientMessage, u64),
    /// A stock client's first frame binds its connection.
    BindStock(ConnId),
    RenewLinks,
    SetTitle(TitleChange),
    End(String),
    /// The meeting's timers at `now_ms`, with the members connected on other nodes.
    Tick {
        now_ms: u64,
        /// Members seen on other nodes within an entry's lifetime (this tick's reading aside).
        elsewhere: HashSet<String>,
        /// Members on other nodes in this tick's reading, if it read presence.
        read: HashSet<String>,
        /// Right after an outage: nobody shown present is marked gone yet.
        settling: bool,
    },
}

impl Intent {
    /// The connection whose board greeting goes out inline, with the answer to its frame.
    fn inline(&self) -> Option<ConnId> {
        match self {
            Intent::BindStock(conn) => Some(*conn),
            _ => None,
        }
    }

    fn plan(&self, meeting: &Meeting, now_ms: u64) -> Plan {
        match self {
            Intent::Command(conn, message, now_ms) => meeting.plan_command(*conn, message.clone(), *now_ms),
            Intent::BindStock(conn) => meeting.plan_bind(*conn, false, None, now_ms),
            Intent::RenewLinks => meeting.plan_renew_links(),
            // Checked before the job started; a sealed room stays sealed, so a replan cannot
            // refuse it.
            Intent::SetTitle(change) => meeting.plan_set_title(change).unwrap_or_default(),
            Intent::End(reason) => meeting.plan_end(reason),
            // A member shown present stays so on a recent entry; one shown reconnecting comes
            // back only on an entry of this tick's reading (normally the node that holds their
            // connection brings them back), never on one seen earlier: they may have left
            // that node since, which then wrote them reconnecting.
            Intent::Tick { now_ms, elsewhere, read, settling } => meeting.plan_tick(*now_ms, |id| {
                if meeting.shared().is_present(id) {
                    *settling || elsewhere.contains(id) || read.contains(id)
                } else {
                    read.contains(id)
                }
            }),
        }
    }
}

#[derive(Debug)]
enum Stage {
    BindStock(ConnId),
    Binary {
        conn: ConnId,
        frame: Bytes,
    },
    Commit(Box<Commit>),
    Leave(ConnId),
    RemovePresence(String),
    PresenceRemoved,
    Sweep {
        timeout_ms: u64,
    },
    Heartbeat {
        forced: bool,
    },
    HeartbeatSent,
    ReadPresence {
        leaving: Option<String>,
    },
    PresenceRead {
        leaving: Option<String>,
    },
    CatchUp,
    CatchUpMutual,
    Save {
        force: bool,
    },
    Saved {
        changed_ms: u64,
        settings: Bytes,
        /// The meeting version the settings are of.
        version: u64,
    },
    Renew,
    Renewed {
        before: u64,
    },
    Settle,
    /// Puts this node's copy back. `again`: once already, in this job, after the store
    /// refused a restore without a tombstone and then held no record (it lost everything once
    /// more): no third try, the next resync takes over.
    Restore {
        again: bool,
    },
    Restored {
        version: u64,
        record: Bytes,
        again: bool,
    },
    Reload {
        again: bool,
    },
    Reloaded {
        again: bool,
    },
    CheckEnded {
        again: bool,
    },
    CheckedEnded {
        again: bool,
    },
}

impl Stage {
    fn commit(intent: Intent, conn: Option<ConnId>) -> Self {
        Stage::Commit(Box::new(Commit { intent, conn, attempts: 0, state: CommitState::Plan }))
    }
}

/// A change on its way through compare-and-set.
#[derive(Debug)]
struct Commit {
    intent: Intent,
    /// The connection that asked; told when the store is unavailable.
    conn: Option<ConnId>,
    attempts: usize,
    state: CommitState,
}

#[derive(Debug)]
enum CommitState {
    Plan,
    /// The member a binding creates is announced in presence before the write, so that no
    /// node's timer sees a member without presence.
    Announcing(Written),
    Writing(Written),
    Reloading,
    Restoring,
}

/// A planned change and its encoded record.
#[derive(Debug)]
struct Written {
    version: u64,
    plan: Plan,
    record: Bytes,
    ttl: Duration,
}

/// What a stage does next.
enum Next {
    /// Wait for the answer to this request, then resume the stage.
    Wait(Stage, Io),
    /// Go on with the next stage.
    Continue,
}

/// One room on one node. See the module documentation.
pub struct RoomMachine {
    id: Arc<str>,
    node: Node,
    board: Board,
    /// A sealed room's board: its log of opaque entries. A sealed room's `board` stays empty.
    sealed: Option<SealedLog>,
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
    /// Set when a bus message may have been lost (a failed publish, a dropped subscription):
    /// the next tick asks the other nodes to exchange what each lacks.
    resync: bool,
    /// When each member was last seen in another node's presence entries. A member missing
    /// from one reading is not gone yet: after a Redis restart, entries come back only with
    /// the next heartbeats.
    seen_elsewhere: HashMap<String, u64>,
    /// Set when a presence reading failed: the store may lose entries while it is away.
    presence_lost: bool,
    /// Until when presence readings may still miss other nodes' members after an outage.
    presence_settles_ms: u64,
    /// When the last tick started: the next is due [`limits::TICK_INTERVAL`] later at the
    /// earliest.
    last_tick_ms: Option<u64>,
    /// For a persistent room: the meeting version whose settings are known to be saved.
    settings_checked: Option<u64>,
    /// What the meeting's timers need ([`Meeting::due`]), as of [`Meeting::changes`].
    meeting_due: Option<(u64, MeetingDue)>,
    /// When presence must next be read ([`RoomMachine::presence_read_due`]), as of
    /// [`Meeting::changes`]; forgotten whenever `seen_elsewhere` changes.
    presence_due: Option<(u64, Option<u64>)>,
    /// Who may see the board ([`Meeting::board_audience`]), as of [`Meeting::changes`]: an edit
    /// goes to the same audience as the last one until someone comes, goes or is let in.
    board_audience: Option<(u64, Audience)>,
    effects: VecDeque<Effect>,
}

impl RoomMachine {
    /// A room whose meeting is `meeting`, on `node`.
    pub fn new(id: &str, meeting: Meeting, node: Node) -> Self {
        let board = Board::with_limit(node.options.max_board_bytes);
        let sealed = meeting.shared().is_sealed().then(|| SealedLog::with_limit(node.options.max_board_bytes));
        RoomMachine {
            id: id.into(),
            sealed,
            meeting: meeting.with_ids(node.ids.clone()),
            node,
            board,
            ended: false,
            last_heartbeat_ms: 0,
            unsaved_since_ms: None,
            changed_ms: 0,
            idle_since_ms: None,
            saved_settings: None,
            resync: false,
            seen_elsewhere: HashMap::new(),
            presence_lost: false,
            presence_settles_ms: 0,
            last_tick_ms: None,
            settings_checked: None,
            meeting_due: None,
            presence_due: None,
            board_audience: None,
            effects: VecDeque::new(),
        }
    }

    /// A persistent room opened from its stored board: `board` (a sealed room's log) and
    /// `settings` as saved.
    pub fn load_board(&mut self, stored: &StoredBoard) -> Result<(), FrameError> {
        match &mut self.sealed {
            Some(log) => {
                *log = SealedLog::from_stored(&stored.board, self.node.options.max_board_bytes)
                    .ok_or(FrameError::Malformed)?;
            }
            None => self.board.load(&stored.board)?,
        }
        self.saved_settings = Some(stored.settings.clone());
        Ok(())
    }

    /// The board as the board store keeps it: the yrs state, or a sealed room's log.
    fn stored_board(&self) -> Bytes {
        match &self.sealed {
            Some(log) => log.encode_stored(),
            None => Bytes::from(self.board.encode_state()),
        }
    }

    /// Notes that the stored settings are `settings` (a room just created and saved).
    pub fn settings_saved(&mut self, settings: Bytes) {
        self.saved_settings = Some(settings);
    }

    /// The next effect, if any. Take them all after every input.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The room id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `change` may become the room's title; `Ok(false)` when it is the title already.
    pub fn check_title(&self, change: &TitleChange) -> Result<bool, TitleError> {
        self.meeting.shared().clone().set_title(change.clone())
    }

    /// The meeting.
    pub fn meeting(&self) -> &Meeting {
        &self.meeting
    }

    /// The board.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// Whether the meeting has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether the meeting is ephemeral.
    pub fn is_ephemeral(&self) -> bool {
        self.meeting.shared().is_ephemeral()
    }

    /// Whether the room's board is sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// A sealed room's log of entries.
    pub fn sealed_log(&self) -> Option<&SealedLog> {
        self.sealed.as_ref()
    }

    /// The room's current link generation, for links issued now.
    pub fn link_generation(&self) -> u64 {
        self.meeting.shared().link_generation()
    }

    /// The room state as a leader sees it.
    pub fn leader_view(&self) -> RoomState {
        self.meeting.state(true)
    }

    /// Whether this is a persistent room with nobody connected here for a while
    /// ([`RoomOptions::idle_unload`]) and nothing unsaved: its memory can go.
    pub fn is_idle(&mut self, now_ms: u64) -> bool {
        if self.is_ephemeral() || self.unsaved_since_ms.is_some() || !self.meeting.has_no_connections() {
            self.idle_since_ms = None;
            return false;
        }
        let since = *self.idle_since_ms.get_or_insert(now_ms);
        now_ms.saturating_sub(since) >= self.node.options.idle_unload.as_millis() as u64
    }

    /// When this room next needs a tick ([`Job::tick`]), in Unix ms, for ticks run with
    /// `awareness_timeout_ms`; `None` when nothing is due until an input changes something.
    /// A time not after `now_ms` means at once. The driver wakes the room then, and asks
    /// again after every input: nothing is polled.
    ///
    /// What is due, each from the state it depends on:
    /// - the end: an ended room is due at once (not a tick interval after the last tick), to
    ///   be retired;
    /// - the meeting's own timers ([`Shared::next_timer`]): a speaking limit, a dropped
    ///   member's grace, an ephemeral meeting's start, maximum length and empty grace;
    /// - presence against this node's connections: a member connected here but shown
    ///   dropped is shown back at once; with one node, a member shown present with no
    ///   connection here is marked dropped at once;
    /// - with other nodes (shared presence): while a member is shown present without a
    ///   connection here, or was seen on another node within an entry's lifetime, presence
    ///   is read at every tick; while members are connected here, their entries are renewed
    ///   every [`limits::PRESENCE_HEARTBEAT`]; after a possible loss on the bus (`resync`),
    ///   and while the board holds updates back, the others are asked at once;
    /// - the board's sweep ([`Board::next_sweep`]): awareness states to remove or forget, the
    ///   whole-board frame to let go of;
    /// - a persistent room's saves: the board [`limits::SAVE_DEBOUNCE`] after its last change
    ///   and [`limits::SAVE_MAX_DELAY`] after its first unsaved one, changed settings at once
    ///   (compared with the saved ones once per version of the record; a failed save stays
    ///   due, so it is retried at every tick), and its unloading after
    ///   [`RoomOptions::idle_unload`] with nobody connected here.
    ///
    /// Ticks stay [`limits::TICK_INTERVAL`] apart at least: what falls due sooner after a tick
    /// waits for the interval's end, as when every room ticked every second, so retries keep
    /// that cadence. A tick when nothing is due does nothing.
    pub fn next_due(&mut self, now_ms: u64, awareness_timeout_ms: u64) -> Option<u64> {
        if self.ended {
            // Nothing to wait for: the driver retires it.
            return Some(now_ms);
        }
        let due = self.earliest_due(now_ms, awareness_timeout_ms)?;
        let interval = limits::TICK_INTERVAL.as_millis() as u64;
        Some(due.max(now_ms).max(self.last_tick_ms.map_or(0, |last| last.saturating_add(interval))))
    }

    fn earliest_due(&mut self, now_ms: u64, awareness_timeout_ms: u64) -> Option<u64> {
        let mut due = Earliest::default();
        let meeting = self.meeting_due();
        due.maybe(meeting.timer);
        if meeting.local_shown_away || (meeting.present_elsewhere && !self.node.clustered) {
            due.at(now_ms);
        }
        if self.node.clustered {
            due.maybe(self.presence_read_due());
            if meeting.local_members {
                due.at(self.last_heartbeat_ms.saturating_add(limits::PRESENCE_HEARTBEAT.as_millis() as u64));
            }
            if self.resync || !self.board.pending().is_empty() {
                due.at(now_ms);
            }
        }
        due.maybe(self.board.next_sweep(awareness_timeout_ms));
        if !self.is_ephemeral() {
            if let Some(since) = self.unsaved_since_ms {
                let quiet = self.changed_ms.saturating_add(limits::SAVE_DEBOUNCE.as_millis() as u64);
                let overdue = since.saturating_add(limits::SAVE_MAX_DELAY.as_millis() as u64);
                due.at(quiet.min(overdue));
            }
            let version = self.meeting.version();
            if self.settings_checked != Some(version) {
                // Once per version of the record: most changes leave the settings as saved.
                if self.saved_settings.as_ref() == Some(&settings_json(self.meeting.shared())) {
                    self.settings_checked = Some(version);
                } else {
                    due.at(now_ms);
                }
            }
            if self.unsaved_since_ms.is_none() && self.meeting.has_no_connections() {
                let since = *self.idle_since_ms.get_or_insert(now_ms);
                due.at(since.saturating_add(self.node.options.idle_unload.as_millis() as u64));
            } else {
                self.idle_since_ms = None;
            }
        }
        due.get()
    }

    /// [`Meeting::board_audience`], computed again only when the meeting changed.
    fn board_audience(&mut self) -> Audience {
        let changes = self.meeting.changes();
        match &self.board_audience {
            Some((at, audience)) if *at == changes => audience.clone(),
            _ => {
                let audience = self.meeting.board_audience();
                self.board_audience = Some((changes, audience.clone()));
                audience
            }
        }
    }

    /// When this node must next read the room's presence entries to keep its view of the
    /// other nodes' members true, if ever (Unix ms; 0 means at once):
    /// - at once while a member is shown present with no connection here and no other node's
    ///   entry seen for them within an entry's lifetime: they may have just joined on
    ///   another node (whose entry is written before the record says so), or be gone;
    /// - otherwise when the first member seen on another node leaves that window
    ///   ([`limits::PRESENCE_TTL`] after the reading that saw them), to see whether their
    ///   node renewed the entry. A member whose node died is then shown reconnecting between
    ///   one and two entry lifetimes after its last heartbeat, as when presence was read at
    ///   every tick, at one reading per room and entry lifetime instead of one a second.
    ///
    /// A member who leaves another node needs no reading here: that node writes the record.
    /// It changes only with the meeting or with what a reading saw, so it is kept until then.
    fn presence_read_due(&mut self) -> Option<u64> {
        let changes = self.meeting.changes();
        if let Some((at, due)) = self.presence_due {
            if at == changes {
                return due;
            }
        }
        let window = limits::PRESENCE_TTL.as_millis() as u64;
        let unseen = self.meeting_due().present_elsewhere
            && self.meeting.present_without_connection().any(|member| !self.seen_elsewhere.contains_key(member));
        let due =
            if unseen { Some(0) } else { self.seen_elsewhere.values().min().map(|seen| seen.saturating_add(window)) };
        self.presence_due = Some((changes, due));
        due
    }

    /// [`Meeting::due`], computed again only when the meeting changed.
    fn meeting_due(&mut self) -> MeetingDue {
        let changes = self.meeting.changes();
        match self.meeting_due {
            Some((at, due)) if at == changes => due,
            _ => {
                let due = self.meeting.due();
                self.meeting_due = Some((changes, due));
                due
            }
        }
    }

    /// The board as Markdown, for a leader's export. A sealed room's board cannot be read
    /// here: it exports as the title and phases alone, and the HTTP layer refuses it before.
    pub fn export_markdown(&self) -> String {
        let shared = self.meeting.shared();
        balint_proto::board::export_markdown(self.board.doc(), shared.title(), shared.template())
    }

    /// Registers a connection that passed the link check (a link of `role` and link
    /// generation `generation`). It becomes a member with its first message. False when the
    /// meeting has ended.
    pub fn connect(&mut self, conn: ConnId, role: Role, generation: u64, name: String) -> bool {
        if self.ended {
            return false;
        }
        self.meeting.connect_link(conn, role, generation, name);
        true
    }

    /// Notes that a bus message may have been lost (a failed publish, a dropped subscription):
    /// the next tick resynchronizes, and the first presence reading after it starts a settling
    /// window, since the backend may have lost other nodes' entries too.
    pub fn mark_resync(&mut self) {
        self.resync = true;
        self.presence_lost = true;
    }

    /// The driver could not queue an envelope for the bus (the backend is away or slow): the
    /// other nodes get the change at the next tick's catch-up instead.
    pub fn bus_queue_full(&mut self) {
        self.effects.push_back(Effect::BackendFailed);
        if !self.resync {
            warn!(room = %self.id, "bus queue full: the other nodes will catch up at the next tick");
        }
        self.mark_resync();
    }

    /// Asks the other nodes for whatever of the board this node lacks (and, with `mutual`,
    /// has them ask back for what they lack).
    pub fn request_catch_up(&mut self, mutual: bool) {
        use yrs::updates::encoder::Encode;
        use yrs::{ReadTxn, Transact};
        if !self.node.clustered {
            // One node: there is nobody to ask.
            return;
        }
        if let Some(log) = &self.sealed {
            let summary = log.summary().encode();
            self.publish_bus(Envelope::SealedSyncRequest { summary, mutual });
            return;
        }
        let state_vector = Bytes::from(self.board.doc().transact().state_vector().encode_v1());
        self.publish_bus(Envelope::SyncRequest { state_vector, mutual });
    }

    /// Handles a message from node `from`, received at `now_ms`.
    pub fn on_bus(&mut self, from: &str, envelope: Envelope, now_ms: u64) {
        match envelope {
            Envelope::Update(update) => self.apply_remote(&update, now_ms),
            Envelope::Awareness(payload) => {
                if let Some(frame) = self.board.apply_remote_awareness(&payload, now_ms) {
                    let audience = self.board_audience();
                    self.send(None, audience, Frame::Binary(frame));
                }
            }
            Envelope::SyncRequest { state_vector, mutual } => {
                let Ok(remote) = StateVector::decode_v1(&state_vector) else { return };
                let updates = if self.board.holds_none_of(&remote) {
                    // A node that opened the room: what a newcomer gets, shared with them.
                    self.board.newcomer_updates(now_ms)
                } else {
                    let diff = Bytes::from(self.board.diff(&remote));
                    std::iter::once(diff).chain(self.board.pending().iter().cloned()).collect()
                };
                for update in updates {
                    self.publish_bus(Envelope::SyncReply { to: from.to_owned(), update });
                }
                if mutual {
                    self.request_catch_up(false);
                }
            }
            Envelope::SyncReply { to, update } if *to == *self.node.id => self.apply_remote(&update, now_ms),
            Envelope::SyncReply { .. } => {}
            Envelope::State { version, record } => match decode_record(&record) {
                Some(shared) => self.install_remote(version, shared, now_ms),
                None => warn!(room = %self.id, "announced room record did not decode"),
            },
            Envelope::SealedEntry(frame) => self.sealed_remote_entry(&frame, now_ms),
            Envelope::SealedSnapshot { sender, upload } => self.sealed_remote_snapshot(sender, &upload, now_ms),
            Envelope::SealedSyncRequest { summary, mutual } => self.sealed_sync_request(from, &summary, mutual, now_ms),
            Envelope::SealedSyncReply { to, log, covered } if *to == *self.node.id => {
                self.sealed_sync_reply(&log, &covered, now_ms);
            }
            Envelope::SealedSyncReply { .. } => {}
        }
    }

    /// An entry another node accepted (an update) or forwarded (awareness), in a sealed room:
    /// logged here too unless known, and forwarded to this node's readers.
    fn sealed_remote_entry(&mut self, frame: &[u8], now_ms: u64) {
        if self.ended {
            return;
        }
        let Some(log) = self.sealed.as_mut() else { return };
        let Ok(sealed_frame::Frame::Entry(entry)) = sealed_frame::decode(frame) else {
            warn!(room = %self.id, "sealed entry from the bus did not decode");
            return;
        };
        let forward = match entry.sealed.kind {
            Kind::Awareness => Some(Bytes::copy_from_slice(frame)),
            Kind::Update | Kind::Snapshot => {
                let added = log.append_remote(entry);
                if added.is_some() {
                    self.board_changed(now_ms);
                }
                added
            }
            Kind::Name | Kind::Title => None,
        };
        if let Some(frame) = forward {
            let audience = self.board_audience();
            self.send(None, audience, Frame::Binary(frame));
        }
    }

    /// A snapshot another node accepted: it replaces the entries it covers here too.
    fn sealed_remote_snapshot(&mut self, sender: String, upload: &[u8], now_ms: u64) {
        if self.ended {
            return;
        }
        let Some(log) = self.sealed.as_mut() else { return };
        let Ok(sealed_frame::Frame::Snapshot(upload)) = sealed_frame::decode(upload) else {
            warn!(room = %self.id, "sealed snapshot from the bus did not decode");
            return;
        };
        if !sealed_frame::valid_sender(&sender) {
            return;
        }
        let before = log.changes();
        let forward = log.compact_remote(sender, upload);
        if log.changes() != before {
            self.board_changed(now_ms);
        }
        if let Some(frame) = forward {
            let audience = self.board_audience();
            self.send(None, audience, Frame::Binary(frame));
        }
    }

    /// Another node asks for the sealed entries it lacks: it gets them, with the ids snapshots
    /// replaced here; what it knows replaced goes from this log too.
    fn sealed_sync_request(&mut self, from: &str, summary: &[u8], mutual: bool, now_ms: u64) {
        if self.ended {
            return;
        }
        let Some(log) = self.sealed.as_mut() else { return };
        let Some(summary) = Summary::decode(summary) else {
            warn!(room = %self.id, "sealed catch-up request did not decode");
            return;
        };
        let before = log.changes();
        log.learn(&summary);
        let changed = log.changes() != before;
        let covered = log.covered();
        let lacking = log.lacking(&summary);
        if !lacking.is_empty() || !covered.is_empty() {
            let log = sealed_frame::encode_log(lacking);
            let reply = Envelope::SealedSyncReply { to: from.to_owned(), log, covered: covered.encode() };
            self.publish_bus(reply);
        }
        if changed {
            self.board_changed(now_ms);
        }
        if mutual {
            self.request_catch_up(false);
        }
    }

    /// The answer to this node's sealed catch-up request.
    fn sealed_sync_reply(&mut self, log_frame: &[u8], covered: &[u8], now_ms: u64) {
        if self.ended {
            return;
        }
        let Some(log) = self.sealed.as_mut() else { return };
        let (Ok(sealed_frame::Frame::Log(entries)), Some(covered)) =
            (sealed_frame::decode(log_frame), Ranges::decode(covered))
        else {
            warn!(room = %self.id, "sealed catch-up reply did not decode");
            return;
        };
        let before = log.changes();
        let added = log.apply_reply(&covered, entries);
        if log.changes() != before {
            self.board_changed(now_ms);
        }
        let audience = self.board_audience();
        for frame in added {
            self.send(None, audience.clone(), Frame::Binary(frame));
        }
    }

    /// Moves `job` on: with the answer to its last request, if it made one. Returns its next
    /// request, or its outcome once it is done.
    pub fn advance(&mut self, job: &mut Job, answer: Option<Answer>, now_ms: u64) -> Step {
        let mut answer = answer;
        while let Some(stage) = job.stages.pop_front() {
            match self.run(stage, answer.take(), job, now_ms) {
                Next::Wait(stage, io) => {
                    job.stages.push_front(stage);
                    return Step::Io(io);
                }
                Next::Continue => {}
            }
        }
        Step::Done(std::mem::take(&mut job.outcome))
    }

    fn run(&mut self, stage: Stage, answer: Option<Answer>, job: &mut Job, now_ms: u64) -> Next {
        match stage {
            Stage::BindStock(conn) => {
                if !self.meeting.is_bound(conn) {
                    job.stages.push_front(Stage::commit(Intent::BindStock(conn), Some(conn)));
                }
                Next::Continue
            }
            Stage::Binary { conn, frame } => {
                let greeted = std::mem::take(&mut job.greeted_inline);
                job.outcome.binary = Some(self.binary(conn, &frame, greeted, now_ms));
                Next::Continue
            }
            Stage::Commit(commit) => self.commit(*commit, answer, job, now_ms),
            Stage::Leave(conn) => {
                let last_here = self.meeting.forget(conn);
                if let Some(removal) = self.board.leave(conn) {
                    let audience = self.board_audience();
                    self.send(Some(conn), audience, Frame::Binary(removal.frame));
                    self.publish_bus(Envelope::Awareness(removal.payload));
                }
                if let Some(member) = last_here {
                    job.stages.push_front(Stage::ReadPresence { leaving: Some(member.clone()) });
                    job.stages.push_front(Stage::RemovePresence(member));
                }
                Next::Continue
            }
            Stage::RemovePresence(member) => {
                Next::Wait(Stage::PresenceRemoved, Io::RemovePresence { entry: self.presence_entry(&member) })
            }
            Stage::PresenceRemoved => {
                if let Some(Answer::Finished(Err(e))) = answer {
                    warn!(room = %self.id, error = %e, "presence removal failed");
                }
                Next::Continue
            }
            Stage::Sweep { timeout_ms } => {
                self.last_tick_ms = Some(now_ms);
                if self.ended {
                    job.stages.clear();
                    return Next::Continue;
                }
                if let Some(removal) = self.board.sweep(now_ms, timeout_ms) {
                    let audience = self.board_audience();
                    self.send(None, audience, Frame::Binary(removal.frame));
                    self.publish_bus(Envelope::Awareness(removal.payload));
                }
                Next::Continue
            }
            Stage::Heartbeat { forced } => {
                // After a possible loss (Redis restarted), presence is announced again at once.
                let due = forced
                    || self.resync
                    || now_ms.saturating_sub(self.last_heartbeat_ms) >= limits::PRESENCE_HEARTBEAT.as_millis() as u64;
                if !due || self.ended {
                    return Next::Continue;
                }
                self.last_heartbeat_ms = now_ms;
                let entries = self.meeting.local_members().iter().map(|m| self.presence_entry(m)).collect();
                Next::Wait(Stage::HeartbeatSent, Io::Heartbeat { entries, now_ms, ttl: limits::PRESENCE_TTL })
            }
            Stage::HeartbeatSent => {
                if let Some(Answer::Finished(Err(e))) = answer {
                    debug!(room = %self.id, error = %e, "presence heartbeat failed");
                }
                Next::Continue
            }
            Stage::ReadPresence { leaving: None } if self.presence_read_due().is_none_or(|at| at > now_ms) => {
                // Nothing a reading could change now (see `presence_read_due`): the timers run
                // on what the last one saw.
                let intent = self.tick_intent(Vec::new(), None, now_ms);
                job.stages.push_front(Stage::commit(intent, None));
                Next::Continue
            }
            Stage::ReadPresence { leaving } => Next::Wait(Stage::PresenceRead { leaving }, Io::ReadPresence { now_ms }),
            Stage::PresenceRead { leaving } => {
                let Some(Answer::Live(Ok(live))) = answer else {
                    // Without presence, nobody is marked gone: skip this round.
                    self.presence_lost = true;
                    return Next::Continue;
                };
                let intent = self.tick_intent(live, leaving.as_deref(), now_ms);
                job.stages.push_front(Stage::commit(intent, None));
                Next::Continue
            }
            Stage::CatchUp => {
                if std::mem::take(&mut self.resync) {
                    self.request_catch_up(true);
                    // The lost message may have announced a new record, or the store may have
                    // lost the record itself (a restart too short for the ping to notice):
                    // read it again, and put it back if it is gone.
                    job.stages.push_front(Stage::Reload { again: false });
                } else if !self.board.pending().is_empty() {
                    // Updates from other nodes arrived ahead of what they build on and are
                    // still held back a tick later: ask the other nodes for what this one lacks.
                    self.request_catch_up(false);
                }
                Next::Continue
            }
            Stage::CatchUpMutual => {
                self.request_catch_up(true);
                Next::Continue
            }
            Stage::Save { force } => {
                let version = self.meeting.version();
                match self.due_save(now_ms, force) {
                    Some((stored, changed_ms, settings)) => {
                        Next::Wait(Stage::Saved { changed_ms, settings, version }, Io::Save(stored))
                    }
                    None => {
                        // Nothing to save: the settings of this version are the saved ones.
                        self.settings_checked = Some(version);
                        Next::Continue
                    }
                }
            }
            Stage::Saved { changed_ms, settings, version } => {
                match answer {
                    Some(Answer::Finished(Ok(()))) => {
                        if self.changed_ms == changed_ms {
                            self.unsaved_since_ms = None;
                        }
                        self.saved_settings = Some(settings);
                        self.settings_checked = Some(version);
                        debug!(room = %self.id, "board saved");
                    }
                    other => {
                        let error = match other {
                            Some(Answer::Finished(Err(e))) => e,
                            _ => BackendError::Corrupt,
                        };
                        warn!(room = %self.id, error = %error, "board save failed; will retry");
                        self.effects.push_back(Effect::BackendFailed);
                    }
                }
                Next::Continue
            }
            Stage::Renew => {
                let before = self.link_generation();
                job.stages.push_front(Stage::Renewed { before });
                job.stages.push_front(Stage::commit(Intent::RenewLinks, None));
                Next::Continue
            }
            Stage::Renewed { before } => {
                let after = self.link_generation();
                if after > before {
                    info!(room = %self.id, generation = after, "links renewed");
                    job.outcome.renewed = Some(after);
                    job.stages.push_front(Stage::Save { force: false });
                }
                Next::Continue
            }
            Stage::Settle => {
                self.settle_presence(now_ms);
                Next::Continue
            }
            Stage::Restore { again } => {
                if self.ended {
                    return Next::Continue;
                }
                match self.restore_request() {
                    Some(Io::Restore { version, record, ttl }) => {
                        let io = Io::Restore { version, record: record.clone(), ttl };
                        Next::Wait(Stage::Restored { version, record, again }, io)
                    }
                    _ => Next::Continue,
                }
            }
            Stage::Restored { version, record, again } => {
                match answer {
                    Some(Answer::Written(Ok(true))) => {
                        info!(room = %self.id, version, "room record restored");
                        // A restore announces nothing by itself: a node that reloaded before
                        // it (and found an older copy or none) learns it from this.
                        self.publish_bus(Envelope::State { version, record });
                    }
                    Some(Answer::Written(Err(e))) => warn!(room = %self.id, error = %e, "room record restore failed"),
                    // The store holds a newer record, or the room ended and was retired on
                    // another node (the store refuses to restore an ended room).
                    Some(Answer::Written(Ok(false))) => job.stages.push_front(Stage::CheckEnded { again }),
                    _ => {}
                }
                Next::Continue
            }
            Stage::CheckEnded { again } => Next::Wait(Stage::CheckedEnded { again }, Io::IsEnded),
            Stage::CheckedEnded { again } => {
                match answer {
                    Some(Answer::Ended(Ok(true))) => {
                        // The room's tombstone: it ended, and was retired on another node, while
                        // this node missed the end's announcement. The meeting ends here too.
                        let plan = self.meeting.plan_end("ended");
                        if let Some(next) = plan.next {
                            let outputs = self.meeting.install(self.meeting.version() + 1, Some(next), None);
                            self.apply(outputs, now_ms, None);
                        }
                    }
                    // No tombstone: the store holds a record at least as new as this node's
                    // (or lost everything again since it refused): read it, and put ours back
                    // if it is gone.
                    Some(Answer::Ended(Ok(false))) if !again => job.stages.push_front(Stage::Reload { again: true }),
                    Some(Answer::Ended(Err(e))) => warn!(room = %self.id, error = %e, "room store unavailable"),
                    _ => {}
                }
                Next::Continue
            }
            Stage::Reload { again } => Next::Wait(Stage::Reloaded { again }, Io::Load),
            Stage::Reloaded { again } => {
                if self.reloaded(answer, now_ms) {
                    job.stages.push_front(Stage::Restore { again });
                }
                Next::Continue
            }
        }
    }

    /// One step of a compare-and-set: plan, announce, write, and on a conflict reload and
    /// plan again, at most [`limits::CAS_ATTEMPTS`] times.
    fn commit(&mut self, mut commit: Commit, answer: Option<Answer>, job: &mut Job, now_ms: u64) -> Next {
        loop {
            match std::mem::replace(&mut commit.state, CommitState::Plan) {
                CommitState::Plan => {
                    if self.ended {
                        return Next::Continue;
                    }
                    if commit.attempts >= limits::CAS_ATTEMPTS {
                        warn!(room = %self.id, "gave up after repeated write conflicts");
                        return Next::Continue;
                    }
                    commit.attempts += 1;
                    let version = self.meeting.version();
                    let plan = commit.intent.plan(&self.meeting, now_ms);
                    let Some(next) = &plan.next else {
                        let Plan { binding, immediate, .. } = plan;
                        let outputs = self.meeting.install(version, None, binding);
                        let inline = commit.intent.inline();
                        job.greeted_inline |=
                            self.apply(immediate.into_iter().chain(outputs).collect(), now_ms, inline);
                        job.outcome.committed = true;
                        return Next::Continue;
                    };
                    let ttl = self.node.options.record_ttl(next);
                    let Some(record) = encode_record(next) else {
                        warn!(room = %self.id, "room record did not serialize");
                        return Next::Continue;
                    };
                    let written = Written { version, plan, record, ttl };
                    if let Some(binding) = &written.plan.binding {
                        let entries = vec![self.presence_entry(binding.member())];
                        commit.state = CommitState::Announcing(written);
                        let io = Io::Heartbeat { entries, now_ms, ttl: limits::PRESENCE_TTL };
                        return Next::Wait(Stage::Commit(Box::new(commit)), io);
                    }
                    commit.state = CommitState::Announcing(written);
                    // Nothing to announce: straight on to the write.
                    continue;
                }
                CommitState::Announcing(written) => {
                    let announce = fanout::encode(
                        &self.node.id,
                        &Envelope::State { version: written.version + 1, record: written.record.clone() },
                    );
                    let io = Io::CompareAndSet {
                        version: written.version,
                        record: written.record.clone(),
                        announce,
                        ttl: written.ttl,
                    };
                    commit.state = CommitState::Writing(written);
                    return Next::Wait(Stage::Commit(Box::new(commit)), io);
                }
                CommitState::Writing(written) => match answer {
                    Some(Answer::Written(Ok(true))) => {
                        let Plan { next, binding, immediate } = written.plan;
                        let outputs = self.meeting.install(written.version + 1, next, binding);
                        let inline = commit.intent.inline();
                        job.greeted_inline |=
                            self.apply(immediate.into_iter().chain(outputs).collect(), now_ms, inline);
                        job.outcome.committed = true;
                        return Next::Continue;
                    }
                    Some(Answer::Written(Ok(false))) => {
                        commit.state = CommitState::Reloading;
                        return Next::Wait(Stage::Commit(Box::new(commit)), Io::Load);
                    }
                    other => {
                        let error = match other {
                            Some(Answer::Written(Err(e))) => e,
                            _ => BackendError::Corrupt,
                        };
                        warn!(room = %self.id, error = %error, "room store unavailable");
                        self.effects.push_back(Effect::BackendFailed);
                        if let Some(conn) = commit.conn.filter(|c| self.meeting.said_hello(*c)) {
                            let error =
                                ServerMessage::refused(Refusal::new(ErrorCode::Unavailable, Reason::Unavailable));
                            self.apply(vec![MeetingOutput::Send(Audience::one(conn), error)], now_ms, None);
                        }
                        return Next::Continue;
                    }
                },
                CommitState::Reloading => {
                    if self.reloaded(answer, now_ms) {
                        if let Some(io) = self.restore_request() {
                            commit.state = CommitState::Restoring;
                            return Next::Wait(Stage::Commit(Box::new(commit)), io);
                        }
                    }
                    // Plan again on what is stored now.
                    return self.commit(commit, None, job, now_ms);
                }
                CommitState::Restoring => {
                    if let Some(Answer::Written(Err(e))) = answer {
                        warn!(room = %self.id, error = %e, "room record restore failed");
                    }
                    return self.commit(commit, None, job, now_ms);
                }
            }
        }
    }

    /// Installs a loaded record if it is newer than this node's. Returns true when the store
    /// had none, or an older one (it lost data and another node put back an older copy):
    /// this node's copy should be put back.
    fn reloaded(&mut self, answer: Option<Answer>, now_ms: u64) -> bool {
        match answer {
            Some(Answer::Loaded(Ok(Some(stored)))) if stored.version < self.meeting.version() => return true,
            Some(Answer::Loaded(Ok(Some(stored)))) => match decode_record(&stored.record) {
                Some(shared) => self.install_remote(stored.version, shared, now_ms),
                None => warn!(room = %self.id, "stored room record did not decode"),
            },
            Some(Answer::Loaded(Ok(None))) => return true,
            Some(Answer::Loaded(Err(e))) => warn!(room = %self.id, error = %e, "room store unavailable"),
            _ => {}
        }
        false
    }

    /// The request that puts this node's copy of the record back, after the store lost it.
    fn restore_request(&self) -> Option<Io> {
        if self.ended {
            return None;
        }
        let shared = self.meeting.shared();
        let record = encode_record(shared)?;
        Some(Io::Restore { version: self.meeting.version(), record, ttl: self.node.options.record_ttl(shared) })
    }

    /// The meeting's timers, given the live presence entries (none when the tick read
    /// nothing): a member counts as connected elsewhere when another node's entry names
    /// them, or named them within an entry's lifetime; `leaving` (whose last connection here
    /// just closed) counts only on a current entry. See [`Intent::plan`] for who comes back.
    fn tick_intent(&mut self, live: Vec<String>, leaving: Option<&str>, now_ms: u64) -> Intent {
        if std::mem::take(&mut self.presence_lost) {
            self.settle_presence(now_ms);
        }
        // Right after an outage, the store may have lost other nodes' entries, and they come
        // back only with those nodes' next heartbeats: until then, nobody present is marked
        // gone (those already gone can still come back, and their grace still runs).
        let settling = now_ms < self.presence_settles_ms;
        let node_suffix = format!("@{}", self.node.id);
        let read: HashSet<String> = live
            .into_iter()
            .filter(|e| !e.ends_with(&node_suffix))
            .filter_map(|e| e.split_once('@').map(|(m, _)| m.to_owned()))
            .collect();
        for member in &read {
            self.seen_elsewhere.insert(member.clone(), now_ms);
        }
        self.presence_due = None;
        // As long as an entry lives: a member whose node died shows as reconnecting after the
        // same delay as one whose entry Redis lost.
        let window = limits::PRESENCE_TTL.as_millis() as u64;
        self.seen_elsewhere.retain(|_, at| now_ms.saturating_sub(*at) < window);
        let elsewhere = self.seen_elsewhere.keys().filter(|m| Some(m.as_str()) != leaving).cloned().collect();
        Intent::Tick { now_ms, elsewhere, read, settling }
    }

    /// Gives every node one heartbeat (and a tick) to re-announce its members before a
    /// missing presence entry counts.
    fn settle_presence(&mut self, now_ms: u64) {
        let window = (limits::PRESENCE_HEARTBEAT + limits::TICK_INTERVAL).as_millis() as u64;
        self.presence_settles_ms = self.presence_settles_ms.max(now_ms + window);
    }

    /// What to save now, if anything: a persistent board [`limits::SAVE_DEBOUNCE`] after its
    /// last change and at most [`limits::SAVE_MAX_DELAY`] after its first unsaved one (with
    /// `force`, whatever is unsaved), and changed settings at once.
    fn due_save(&self, now_ms: u64, force: bool) -> Option<(StoredBoard, u64, Bytes)> {
        if self.ended || self.is_ephemeral() {
            return None;
        }
        let settings = settings_json(self.meeting.shared());
        let settings_changed = self.saved_settings.as_ref() != Some(&settings);
        let board_due = self.unsaved_since_ms.is_some_and(|since| {
            let quiet = now_ms.saturating_sub(self.changed_ms) >= limits::SAVE_DEBOUNCE.as_millis() as u64;
            let overdue = now_ms.saturating_sub(since) >= limits::SAVE_MAX_DELAY.as_millis() as u64;
            force || quiet || overdue
        });
        if !(settings_changed || board_due) {
            return None;
        }
        let stored = StoredBoard { settings: settings.clone(), board: self.stored_board() };
        Some((stored, self.changed_ms, settings))
    }

    /// Feeds a binary frame from `conn` to the board.
    /// `greeted`: the frame bound a stock client, whose greeting goes first.
    fn binary(&mut self, conn: ConnId, frame: &[u8], greeted: bool, now_ms: u64) -> Result<BinaryOutcome, FrameError> {
        let mut outcome = BinaryOutcome::default();
        if !self.meeting.is_connected(conn) {
            // Removed by a leader; its close is on the way.
            return Ok(outcome);
        }
        if greeted {
            outcome.reply = self.greeting();
        }
        if self.sealed.is_some() {
            return self.sealed_binary(conn, frame, outcome, now_ms);
        }
        if !self.meeting.can_read(conn) {
            // Waiting in the lobby (or not yet bound, when the store was unavailable): nothing
            // of the board goes either way. A malformed frame is still refused.
            sync::decode_frame(frame)?;
            return Ok(outcome);
        }
        let permission = self.meeting.can_write(conn);
        let effects = self.board.handle_frame(conn, frame, permission.is_ok(), now_ms)?;
        if effects.relay.iter().any(|r| matches!(r, Relay::Update(_))) {
            self.board_changed(now_ms);
        }
        if !effects.broadcast.is_empty() {
            let audience = self.board_audience();
            for frame in effects.broadcast {
                self.send(Some(conn), audience.clone(), Frame::Binary(frame));
            }
        }
        // Queued for the bus in order: other nodes get this node's changes in the order they
        // were applied here.
        for relay in effects.relay {
            self.publish_bus(match relay {
                Relay::Update(update) => Envelope::Update(update),
                Relay::Awareness(payload) => Envelope::Awareness(payload),
            });
        }
        outcome.reply.extend(effects.reply);
        outcome.board_full = effects.board_full;
        outcome.refused = match permission {
            Err(reason) if effects.write_refused && self.meeting.said_hello(conn) => Some(reason),
            _ => None,
        };
        Ok(outcome)
    }

    /// Feeds a binary frame from `conn` to a sealed room's log. Only the entry's header is read:
    /// refusals go by the sender's identity and the room's state, as in a plain room.
    fn sealed_binary(
        &mut self,
        conn: ConnId,
        frame: &[u8],
        mut outcome: BinaryOutcome,
        now_ms: u64,
    ) -> Result<BinaryOutcome, FrameError> {
        let sealed = match sealed_frame::decode(frame) {
            Ok(sealed_frame::Frame::ClientEntry(sealed)) => sealed,
            Ok(sealed_frame::Frame::Snapshot(upload)) => return Ok(self.snapshot(conn, upload, outcome, now_ms)),
            // y-sync and the server's own frame types: not spoken here.
            Ok(_) => return Err(FrameError::UnknownType(u32::from(frame[0]))),
            Err(sealed_frame::FrameError::UnknownType(t)) => return Err(FrameError::UnknownType(u32::from(t))),
            Err(sealed_frame::FrameError::Empty) => return Err(FrameError::Empty),
            Err(sealed_frame::FrameError::Truncated) => return Err(FrameError::Truncated),
            Err(_) => return Err(FrameError::Malformed),
        };
        if !matches!(sealed.kind, Kind::Update | Kind::Awareness) {
            return Err(FrameError::Malformed);
        }
        if !self.meeting.can_read(conn) {
            // Waiting in the lobby: nothing of the board goes either way.
            return Ok(outcome);
        }
        let Some(sender) = self.meeting.member_of(conn).map(str::to_owned) else { return Ok(outcome) };
        let kind = sealed.kind;
        let entry = Entry { sender, sealed };
        let audience = self.board_audience();
        match kind {
            Kind::Awareness => {
                // Forwarded to every reader, here and on the other nodes, never logged.
                let frame = sealed_frame::encode_entry(&entry);
                self.send(Some(conn), audience, Frame::Binary(frame.clone()));
                self.publish_bus(Envelope::SealedEntry(frame));
            }
            _ => {
                if let Err(refusal) = self.meeting.can_write(conn) {
                    outcome.refused = self.meeting.said_hello(conn).then_some(refusal);
                    return Ok(outcome);
                }
                let Some(log) = self.sealed.as_mut() else { return Ok(outcome) };
                match log.append(entry) {
                    Appended::Added(frame) => {
                        self.board_changed(now_ms);
                        self.send(Some(conn), audience, Frame::Binary(frame.clone()));
                        self.publish_bus(Envelope::SealedEntry(frame));
                    }
                    Appended::Duplicate => {}
                    Appended::Full => outcome.board_full = true,
                }
            }
        }
        Ok(outcome)
    }

    /// A snapshot upload from `conn`: the entries it covers are replaced by it, if the sender
    /// may write now. Nobody is sent anything: members hold what it holds already.
    fn snapshot(
        &mut self,
        conn: ConnId,
        upload: sealed_frame::SnapshotUpload,
        mut outcome: BinaryOutcome,
        now_ms: u64,
    ) -> BinaryOutcome {
        if !self.meeting.can_read(conn) {
            return outcome;
        }
        let Some(sender) = self.meeting.member_of(conn).map(str::to_owned) else { return outcome };
        if let Err(refusal) = self.meeting.can_write(conn) {
            outcome.refused = self.meeting.said_hello(conn).then_some(refusal);
            return outcome;
        }
        let Some(log) = self.sealed.as_mut() else { return outcome };
        let frame = self.node.clustered.then(|| sealed_frame::encode_snapshot(&upload));
        match log.compact(sender.clone(), upload) {
            Compacted::Replaced => {
                debug!(room = %self.id, "sealed log compacted");
                self.board_changed(now_ms);
                if let Some(upload) = frame {
                    self.publish_bus(Envelope::SealedSnapshot { sender, upload });
                }
            }
            Compacted::Stale => {}
            Compacted::Full => outcome.board_full = true,
        }
        outcome
    }

    /// What a connection gets when it may first read the board: a sealed room's log, or the
    /// server's y-sync step 1.
    fn greeting(&self) -> Vec<Bytes> {
        match &self.sealed {
            Some(log) => vec![log.log_frame()],
            None => self.board.greeting(),
        }
    }

    fn apply_remote(&mut self, update: &[u8], now_ms: u64) {
        if let Ok(Some(frame)) = self.board.apply_remote(update) {
            self.board_changed(now_ms);
            let audience = self.board_audience();
            self.send(None, audience, Frame::Binary(frame));
        }
    }

    fn board_changed(&mut self, now_ms: u64) {
        if !self.is_ephemeral() {
            self.unsaved_since_ms.get_or_insert(now_ms);
            self.changed_ms = now_ms;
        }
    }

    fn install_remote(&mut self, version: u64, shared: Shared, now_ms: u64) {
        let outputs = self.meeting.install(version, Some(shared), None);
        self.apply(outputs, now_ms, None);
    }

    fn presence_entry(&self, member: &str) -> String {
        format!("{member}@{}", self.node.id)
    }

    fn send(&mut self, origin: Option<ConnId>, audience: Audience, frame: Frame) {
        self.effects.push_back(Effect::Send { origin, audience, frame });
    }

    fn publish_bus(&mut self, envelope: Envelope) {
        if self.node.clustered {
            self.effects.push_back(Effect::Publish(envelope));
        }
    }

    /// Turns the meeting's outputs into effects, in order. Returns whether `inline` was
    /// greeted into the board: its greeting is then left to the answer to its frame.
    fn apply(&mut self, outputs: Vec<MeetingOutput>, now_ms: u64, inline: Option<ConnId>) -> bool {
        let mut greeted_inline = false;
        for output in outputs {
            match output {
                MeetingOutput::Send(audience, message) => self.send(None, audience, Frame::Text(message.to_json())),
                MeetingOutput::Greet { conn, full } => {
                    if !full && inline == Some(conn) {
                        greeted_inline = true;
                        continue;
                    }
                    let audience = Audience::one(conn);
                    for frame in self.greeting() {
                        self.send(None, audience.clone(), Frame::Binary(frame));
                    }
                    if full && self.sealed.is_none() {
                        for frame in self.board.newcomer_frames(now_ms) {
                            self.send(None, audience.clone(), Frame::Binary(frame));
                        }
                    }
                }
                MeetingOutput::Close { conn, code, reason } => {
                    self.send(None, Audience::one(conn), Frame::Close { code, reason });
                }
                MeetingOutput::End { reason } => {
                    info!(room = %self.id, reason = %reason, "meeting ended");
                    let ended = ServerMessage::Ended { reason };
                    let hello = self.meeting.everyone_with_hello();
                    self.send(None, Audience::of(hello), Frame::Text(ended.to_json()));
                    let everyone = self.meeting.everyone();
                    let reason = "this meeting has ended";
                    self.send(None, everyone, Frame::Close { code: close::MEETING_ENDED, reason });
                    self.ended = true;
                    // The board and its history go now; nothing else holds them.
                    self.board = Board::with_limit(0);
                    if self.sealed.is_some() {
                        self.sealed = Some(SealedLog::with_limit(0));
                    }
                }
            }
        }
        greeted_inline
    }
}

/// The stored form of a room record ([`record`] has the format).
pub fn encode_record(shared: &Shared) -> Option<Bytes> {
    record::encode(shared).ok()
}

/// A room record from its stored form.
pub fn decode_record(stored: &[u8]) -> Option<Shared> {
    record::decode(stored).ok()
}

/// The settings of the meeting `shared`, as a persistent room saves them with its board: every
/// setting a leader can change that must outlive a restart.
pub fn settings_json(shared: &Shared) -> Bytes {
    record::encode_settings(shared).unwrap_or_default()
}

#[cfg(test)]
#[path = "machine_sim.rs"]
mod sim;

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
