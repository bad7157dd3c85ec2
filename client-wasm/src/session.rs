//! The client's side of a room connection, sans-IO.
//!
//! [`Session`] is a state machine in the manner of `quinn-proto`: the driver (the browser glue
//! in `web.rs`, or a test) feeds it what happened (`handle_open`, `handle_text`,
//! `handle_binary`, `handle_close`, `handle_probe`, `handle_timeout`, with `now` passed in) and
//! the user's actions (`command`, `edit_text`, `add_card`, `reconnect_now`), then drains what
//! to do ([`Session::poll_io`]) and what to show ([`Session::poll_event`]). It owns no socket,
//! no timer and no clock.
//!
//! The connection's life:
//!
//! ```text
//! start ─▶ Connecting ─open─▶ hello ─▶ Waiting (lobby) ─admit─▶ Welcomed ─▶ sync
//!              ▲                                                   │
//!              └──── Retrying (backoff) ◀── close (reconnect now or later) ◀──┘
//!                         ▲             ◀── silence for SILENCE_LIMIT_MS (stalled)
//!                         └── reconnect_now (online again, page visible again, the button)
//!                                             close 4410 ─▶ Ended (board wiped, no retry)
//!                                             close 4403 ─▶ Removed (no retry)
//!                                             close 4412 ─▶ LinkRenewed (no retry)
//!                                             other 44xx ─▶ Refused (no retry)
//!  a socket that never opened ─▶ Probing (plain GET: 410 ended, 401/404 invalid link, else retry)
//! ```
//!
//! Whether and how soon to reconnect after a close comes from the one close-code table,
//! [`balint_proto::close::reconnect_after`]: 4400–4499 never, 4500–4599 later (a longer first
//! delay), anything else at once (with the usual backoff).
//!
//! **Silence.** The server sends something (at least a `heartbeat`) to a connection that said
//! `hello` every [`HEARTBEAT_INTERVAL_MS`](balint_proto::room::HEARTBEAT_INTERVAL_MS). A socket on which nothing was heard for
//! [`SILENCE_LIMIT_MS`] is taken for stalled (a sleeping laptop, Wi-Fi that stopped forwarding
//! without closing): the session drops it, shows `reconnecting` (reason `no_answer`) and opens
//! a new one. The same limit bounds an attempt that never opens and a probe never answered.
//!
//! `hello` is always the first frame of a socket, carrying the resume token of the last
//! `welcome` or `waiting`, so a reconnect within the grace period is the same member with the
//! same place in the queue. The token lives only in memory and, through [`Event::Resume`], in
//! the tab's sessionStorage.

use std::collections::VecDeque;

use balint_proto::close::{self, Reconnect};
use std::collections::BTreeMap;

use balint_proto::room::{
    ClientMessage, ErrorCode, Phase, Released, Role, RoomState, ServerMessage, Status, SILENCE_LIMIT_MS,
};
use balint_proto::rules::{self, Candidate, MemberActions, NextSpeaker, OwnActions, Refusal, Seat, Stage, Target};
use balint_proto::sealed::{self as sealed_frame, Entry, Kind, SnapshotUpload};
use balint_proto::sync::{self, Message, SyncMessage};
use serde::{Deserialize, Serialize};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use crate::attendance::{Attendance, Sheet};
use crate::awareness::{Awareness, RemoteCursor};
use crate::backoff::Backoff;
use crate::board::{Board, NewCard, TextKey};
use crate::seal::{self, RoomKey, SealError, Sequence};

/// A sealed room's log is compacted (by the client chosen for it) once it holds this many
/// entries since the last snapshot...
pub const COMPACT_AFTER_ENTRIES: usize = 200;
/// ...or this many bytes of ciphertext.
pub const COMPACT_AFTER_BYTES: usize = 64 * 1024;
/// A snapshot upload larger than this is not sent: it would pass the server's frame limit
/// (1 MiB by default).
pub const MAX_SNAPSHOT_FRAME_BYTES: usize = 900 * 1024;

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// Open a WebSocket to the room (closing any previous one).
    Connect,
    /// The last socket failed before it opened; ask the server why with a plain HTTP GET of the
    /// same URL and report the status with [`Session::handle_probe`].
    Probe,
    /// Send a text frame (the room protocol).
    SendText(String),
    /// Send a binary frame (y-sync, or a sealed frame in a sealed room).
    SendBinary(Vec<u8>),
    /// Close the current socket and forget it: report nothing more from it (neither frames nor
    /// its close). The session asks for a new one with [`Io::Connect`] when it reconnects.
    Close,
}

/// Where the connection stands, as the UI shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Opening the first socket.
    Connecting,
    /// Held in the lobby until a leader admits us.
    Waiting,
    /// In the room.
    Online,
    /// Not connected, and trying again: `retry_in_ms` says when (none: trying now), `reason`
    /// why the connection was lost. Edits stay on the board and are sent on reconnect; room
    /// commands are refused until then.
    Reconnecting,
    /// The meeting has ended. The board was wiped. Final.
    Ended,
    /// A leader removed us or turned us away from the lobby. Final.
    Removed,
    /// The link was replaced by a newer one (close 4412): newcomers need the new link. Final.
    LinkRenewed,
    /// The server refused this client for good (close 4400–4499 other than the above):
    /// `reason` says why. Final.
    Refused,
    /// The link is not valid (forged, expired, or for an unknown room). Final.
    InvalidLink,
    /// We left. Final.
    Left,
}

/// Why the connection stands where it does, as a stable key for the UI's catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The socket closed without a reason we know (a network change, a proxy).
    ConnectionLost,
    /// Nothing was heard for [`SILENCE_LIMIT_MS`], or the server heard nothing from us
    /// (close 4504): the network stalled.
    NoAnswer,
    /// The server could not be reached at all.
    Unreachable,
    /// The server restarted (close 1012).
    ServerRestart,
    /// The connection could not keep up with the room (close 4508).
    TooSlow,
    /// The room is full (close 4509).
    RoomFull,
    /// The connection sent too fast for too long (close 4529).
    RateLimited,
    /// The server is busy (another 45xx close, or HTTP 503/429).
    ServerBusy,
    /// The server could not read what this client sent (close 4400, 4401).
    Malformed,
    /// The board is full (close 4413).
    BoardFull,
    /// A leader ended the meeting.
    EndedByLeader,
    /// The meeting ended because the room stayed empty.
    Empty,
    /// The meeting reached its longest length.
    MaxLength,
    /// A leader deleted the room.
    Deleted,
    /// The link is forged, expired, or for an unknown room (HTTP 401, 404).
    BadLink,
    /// The server does not accept sockets from this page's origin (HTTP 403).
    OriginRefused,
    /// The display name was refused (HTTP 400).
    BadName,
}

impl Reason {
    /// Why the server closed a socket with `code`.
    fn of_close(code: u16) -> Reason {
        match code {
            close::SERVICE_RESTART => Reason::ServerRestart,
            close::UNRESPONSIVE => Reason::NoAnswer,
            close::TOO_SLOW => Reason::TooSlow,
            close::ROOM_FULL => Reason::RoomFull,
            close::RATE_LIMITED => Reason::RateLimited,
            close::MALFORMED_SYNC | close::UNKNOWN_MESSAGE_TYPE => Reason::Malformed,
            close::BOARD_FULL => Reason::BoardFull,
            _ if close::reconnect_after(code) == Reconnect::Later => Reason::ServerBusy,
            _ => Reason::ConnectionLost,
        }
    }
}

/// Something the UI should show.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The connection changed.
    Connection {
        /// Where it stands.
        status: ConnectionStatus,
        /// For `reconnecting`: how long until the next attempt; none while an attempt runs.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
        /// For `reconnecting`, `refused`, `invalid_link` and `ended`: why, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
        /// The close code of the socket that dropped, or the HTTP status of a refused
        /// handshake. For `invalid_link`: the HTTP status (401 bad or expired link, 403 page
        /// origin refused, 404 unknown room, 400 bad name).
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
    },
    /// We are in the room as `member_id`.
    Welcome {
        /// Our member id.
        member_id: String,
        /// Our role at that moment (see `state.members` for later changes).
        role: Role,
    },
    /// We came back after the reconnect grace period and rejoined as a new member; this is
    /// what the old membership lost.
    Released(Released),
    /// A newer room state. Replace the whole view with it.
    State {
        /// The snapshot.
        state: Box<RoomState>,
        /// Our member id.
        me: String,
        /// Whether we may write on the board now.
        can_write: bool,
        /// What we may do now, by the rules of [`balint_proto::rules`].
        actions: Actions,
    },
    /// The board changed (remote edits, a resync or a wipe): render it again.
    Board,
    /// Someone else's awareness state changed: ask for the cursors again. (They also fade
    /// when not renewed, without an event: a page showing cursors asks on a timer too.)
    Cursors,
    /// The floor holder passed the speaking limit.
    TimeUp {
        /// The speaker.
        member: String,
        /// The limit.
        limit_secs: u32,
    },
    /// The server refused a command, or an edit of ours.
    Error {
        /// Its stable code.
        code: ErrorCode,
        /// Its specific reason, when the server gave one: the key of the UI's sentence.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<rules::Reason>,
        /// Its human-readable text.
        message: String,
        /// An edit of ours was refused and thrown away: the UI says that the last change was
        /// not kept. Only a refusal by the server of an edit this client sent sets it.
        lost_edit: bool,
    },
    /// Sealed rooms: an entry of the board (or an awareness state) failed to authenticate or
    /// was not a well-formed update, and was skipped. Reported once per session; it carries
    /// nothing of the entry.
    Unreadable,
    /// Keep this resume token for the tab (sessionStorage), or forget it (`None`).
    Resume {
        /// The token.
        token: Option<String>,
    },
}

/// What we may do now: our own controls, and (for a leader) the menu of each member, keyed
/// by member id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actions {
    /// Our own controls.
    #[serde(flatten)]
    pub own: OwnActions,
    /// The leader's menu of each member in the room (all false for a non-leader).
    pub members: BTreeMap<String, MemberActions>,
}

/// Why a command was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// We are not in the room right now (connecting, reconnecting, in the lobby, or finished).
    #[error("not connected to the room")]
    NotConnected,
    /// `hello` is sent by the session itself.
    #[error("hello is sent by the session")]
    NotACommand,
}

/// Why an edit was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The rules say we may not write now, for this reason.
    #[error("{}", .0.reason.as_str())]
    ReadOnly(Refusal),
    /// The card does not exist.
    #[error("no such card")]
    UnknownCard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Idle,
    Connecting { opened: bool },
    Waiting,
    Welcomed,
    Retrying { at_ms: u64 },
    Probing,
    Finished(ConnectionStatus),
}

/// One member's connection to one room.
pub struct Session {
    board: Board,
    link: Link,
    member_id: Option<String>,
    role: Option<Role>,
    resume: Option<String>,
    state: Option<RoomState>,
    backoff: Backoff,
    /// A sync step 1 of ours is unanswered: no other is sent until its step 2 arrives.
    syncing: bool,
    /// When anything was last heard on the current socket (or the attempt or probe began).
    heard_ms: u64,
    /// Why the last connection was lost, repeated while attempts run.
    lost: Option<Reason>,
    /// Frames carrying edits of ours sent so far (updates, and step 2 answers with content).
    edits_sent: u64,
    /// How many of them the server is known to have taken: it answered a step 1 sent after
    /// them with no refusal in between (it handles a socket's frames in order).
    edits_confirmed: u64,
    /// `edits_sent` when the unanswered step 1 went out.
    step1_covers: u64,
    /// The latest time the driver passed in, for what happens without a time of its own
    /// (the end of the meeting closes the attendance at it).
    clock_ms: u64,
    /// The attendance sheet, kept while we are a leader (see [`crate::attendance`]).
    attendance: Attendance,
    /// Our cursor and everyone else's (see [`crate::awareness`]).
    awareness: Awareness,
    /// In a sealed room, its key and the log as this client knows it.
    sealing: Option<Sealing>,
    io: VecDeque<Io>,
    events: VecDeque<Event>,
}

impl Session {
    /// A session that will continue the membership of `resume` (a token kept by this tab), if
    /// any.
    pub fn new(resume: Option<String>) -> Self {
        Session {
            board: Board::new(),
            link: Link::Idle,
            member_id: None,
            role: None,
            resume,
            state: None,
            backoff: Backoff::default(),
            syncing: false,
            heard_ms: 0,
            lost: None,
            edits_sent: 0,
            edits_confirmed: 0,
            step1_covers: 0,
            clock_ms: 0,
            attendance: Attendance::default(),
            awareness: Awareness::default(),
            sealing: None,
            io: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A session in the sealed room `room`, whose key the link carried (`docs/PROTOCOL.md`
    /// §13): the board travels as sealed entries instead of y-sync. Fails only when the
    /// platform gives no random numbers.
    pub fn sealed(resume: Option<String>, room: &str, key: RoomKey, name: &str) -> Result<Self, SealError> {
        let mut session = Session::new(resume);
        session.sealing = Some(Sealing {
            key,
            room: room.to_owned(),
            name: name.trim().to_owned(),
            seq: Sequence::new()?,
            synced: false,
            log: Vec::new(),
            bytes_since_snapshot: 0,
            unreadable: false,
            reported: false,
        });
        Ok(session)
    }

    /// Whether this session speaks sealed frames.
    pub fn is_sealed(&self) -> bool {
        self.sealing.is_some()
    }

    /// Opens the first connection.
    pub fn start(&mut self, now_ms: u64) {
        if self.link == Link::Idle {
            self.connect(now_ms);
        }
    }

    fn connect(&mut self, now_ms: u64) {
        self.link = Link::Connecting { opened: false };
        self.heard_ms = now_ms;
        self.io.push_back(Io::Connect);
        match self.lost {
            // A new attempt after a loss: still reconnecting, now trying.
            Some(reason) => self.events.push_back(Event::Connection {
                status: ConnectionStatus::Reconnecting,
                retry_in_ms: None,
                reason: Some(reason),
                code: None,
            }),
            None => self.status(ConnectionStatus::Connecting),
        }
    }

    fn status(&mut self, status: ConnectionStatus) {
        self.events.push_back(Event::Connection { status, retry_in_ms: None, reason: None, code: None });
    }

    /// Whether a socket is open or opening, so that silence on it counts.
    fn has_socket(&self) -> bool {
        matches!(self.link, Link::Connecting { .. } | Link::Waiting | Link::Welcomed)
    }

    /// The socket opened: say `hello` first, before any binary frame.
    pub fn handle_open(&mut self, now_ms: u64) {
        if let Link::Connecting { opened } = &mut self.link {
            *opened = true;
            self.heard_ms = now_ms;
            let hello = ClientMessage::Hello { resume: self.resume.clone() };
            self.io.push_back(Io::SendText(to_json(&hello)));
        }
    }

    /// Something arrived on the socket that the driver holds back for now (binary frames while
    /// an input method composes): the connection is alive.
    pub fn handle_activity(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        if self.has_socket() {
            self.heard_ms = self.heard_ms.max(now_ms);
        }
    }

    /// A text frame arrived.
    pub fn handle_text(&mut self, text: &str, now_ms: u64) {
        if self.is_finished() {
            return;
        }
        self.handle_activity(now_ms);
        // A message this client does not know (a newer server) is ignored.
        let Ok(message) = serde_json::from_str::<ServerMessage>(text) else { return };
        match message {
            ServerMessage::Welcome { member_id, role, resume_token, state, released } => {
                self.link = Link::Welcomed;
                self.backoff.reset();
                self.lost = None;
                self.member_id = Some(member_id.clone());
                self.role = Some(role);
                self.remember(resume_token);
                self.events.push_back(Event::Welcome { member_id, role });
                if let Some(released) = released {
                    self.events.push_back(Event::Released(released));
                }
                self.status(ConnectionStatus::Online);
                // A new socket's welcome is the truth for it, whatever the old socket saw last.
                self.state = None;
                self.install(state, now_ms);
                self.send_sealed_name();
                // Edits sent on an old socket either reached the server or travel again in
                // our answer to its step 1; no refusal on this socket is about them.
                self.edits_confirmed = self.edits_sent;
                match &mut self.sealing {
                    // The server sends its log; local edits wait in the board until it came.
                    Some(sealing) => sealing.synced = false,
                    // Our own sync step 1: the server answers with what we lack.
                    None => self.send_step1(),
                }
                // Then who we are (and where our caret is); the server sends everyone else's
                // states after its step 1.
                self.awareness.forget_remote();
                self.publish_awareness(now_ms);
            }
            ServerMessage::Waiting { member_id, resume_token } => {
                self.link = Link::Waiting;
                self.backoff.reset();
                self.lost = None;
                self.member_id = Some(member_id);
                self.remember(resume_token);
                self.status(ConnectionStatus::Waiting);
                // The leaders see who waits only by the name we send.
                self.send_sealed_name();
            }
            ServerMessage::State { state } => self.install(state, now_ms),
            ServerMessage::Heartbeat {} => {}
            ServerMessage::TimeUp { member, limit_secs } => self.events.push_back(Event::TimeUp { member, limit_secs }),
            ServerMessage::Ended { reason } => {
                let reason = serde_json::from_value(serde_json::Value::String(reason)).ok();
                self.end(reason);
            }
            ServerMessage::Error { code, message, reason } => {
                let mut lost_edit = false;
                if matches!(code, ErrorCode::ReadOnly | ErrorCode::BoardFull) {
                    if self.edits_sent == self.edits_confirmed {
                        // The refused frame carried no edit of ours (an empty answer to the
                        // server's step 1, say): nothing of the user's was lost.
                        return;
                    }
                    // Our copy holds an edit the room refused: it has diverged. Throw it away
                    // and sync a fresh one.
                    self.edits_confirmed = self.edits_sent;
                    self.board.wipe();
                    self.events.push_back(Event::Board);
                    if let Some(sealing) = &mut self.sealing {
                        // Nothing acknowledges a sealed entry: the server's log is the truth,
                        // and a new socket brings it.
                        sealing.forget_log();
                        if self.link == Link::Welcomed {
                            self.io.push_back(Io::Close);
                            self.connect(now_ms);
                        }
                    } else if self.link == Link::Welcomed {
                        self.send_step1();
                    }
                    lost_edit = true;
                }
                self.events.push_back(Event::Error { code, reason, message, lost_edit });
            }
        }
    }

    fn remember(&mut self, token: String) {
        if self.resume.as_deref() != Some(token.as_str()) {
            self.resume = Some(token.clone());
            self.events.push_back(Event::Resume { token: Some(token) });
        }
    }

    /// Keeps `state` if it is newer than the one shown, and tells the UI.
    fn install(&mut self, mut state: RoomState, now_ms: u64) {
        if self.state.as_ref().is_some_and(|current| current.version >= state.version) {
            return;
        }
        if let Some(sealing) = &self.sealing {
            sealing.open_state(&mut state);
        }
        let me = self.member_id.as_deref().and_then(|id| state.members.iter().find(|m| m.id == id));
        if let Some(me) = me {
            if me.role == Role::Leader {
                self.attendance.observe(&state, now_ms);
            }
            // In a sealed room our name is ours before the room shows it.
            let name = self.sealing.as_ref().map_or(me.name.as_str(), |s| s.name.as_str());
            self.awareness.set_user(name, &me.id);
        }
        self.state = Some(state);
        if !self.can_write() {
            // A presenter pushed back, a locked board: no caret of ours is shown. Everyone
            // else's still is.
            self.clear_cursor(now_ms);
        }
        let state = self.state.clone().expect("just set");
        let actions = self.actions().expect("a state is installed");
        self.events.push_back(Event::State {
            state: Box::new(state),
            me: self.member_id.clone().unwrap_or_default(),
            can_write: self.can_write(),
            actions,
        });
    }

    /// A binary frame arrived. Returns whether the board changed.
    pub fn handle_binary(&mut self, frame: &[u8], now_ms: u64) -> bool {
        self.handle_activity(now_ms);
        if self.link != Link::Welcomed {
            return false;
        }
        if self.sealing.is_some() {
            return self.handle_sealed(frame, now_ms);
        }
        // The server never sends a bad frame; if one came anyway, there is nothing to answer.
        let Ok(messages) = sync::decode_frame(frame) else { return false };
        let mut changed = false;
        let mut cursors_changed = false;
        for message in messages {
            match message {
                Message::Sync(SyncMessage::SyncStep1(state_vector)) => {
                    let update = self.board.update_since(&state_vector);
                    // Only a writer's answer can carry an edit: a reader's is never a refused
                    // change of the user's.
                    if self.can_write() && !is_empty_update(&update) {
                        self.edits_sent += 1;
                    }
                    self.io.push_back(Io::SendBinary(sync::encode_step2(&update).to_vec()));
                }
                Message::Sync(SyncMessage::SyncStep2(update)) => {
                    if self.syncing {
                        self.edits_confirmed = self.edits_confirmed.max(self.step1_covers);
                    }
                    self.syncing = false;
                    changed |= self.board.apply_update(&update).is_ok();
                }
                Message::Sync(SyncMessage::Update(update)) => {
                    changed |= self.board.apply_update(&update).is_ok();
                }
                Message::Awareness(update) => {
                    let applied = self.awareness.apply(&update, self.board.client_id(), now_ms);
                    if applied.republish {
                        self.publish_awareness(now_ms);
                    }
                    cursors_changed |= applied.changed;
                }
                Message::AwarenessQuery | Message::Auth(_) | Message::Custom(..) => {}
            }
        }
        if changed {
            self.events.push_back(Event::Board);
        }
        if cursors_changed {
            self.events.push_back(Event::Cursors);
        }
        // Updates that arrived ahead of what they build on wait in the document. Normally the
        // next frames fill the gap; if they did not (yrs 0.28.1 can lose track of such updates
        // when they arrive out of order), the server's answer to a step 1 does.
        if self.board.is_waiting() && !self.syncing {
            self.send_step1();
        }
        changed
    }

    /// Sealed rooms: sends our display name, sealed with our member id, unless the room shows
    /// it already.
    fn send_sealed_name(&mut self) {
        let (Some(sealing), Some(me)) = (&mut self.sealing, self.member_id.as_deref()) else { return };
        let shown = self.state.as_ref().and_then(|s| s.members.iter().find(|m| m.id == me)).map(|m| m.name.as_str());
        if shown == Some(sealing.name.as_str()) {
            return;
        }
        let Ok(seq) = sealing.seq.next_seq() else { return };
        let Ok(sealed_name) = seal::seal_text(&sealing.key, &sealing.room, me, seq, Kind::Name, &sealing.name) else {
            return;
        };
        self.io.push_back(Io::SendText(to_json(&ClientMessage::SetSealedName { sealed_name })));
    }

    /// Sends our awareness state, when we are in the room and know who we are.
    fn publish_awareness(&mut self, now_ms: u64) {
        if self.link != Link::Welcomed {
            return;
        }
        if let Some(update) = self.awareness.publish(self.board.client_id(), now_ms) {
            if self.sealing.is_some() {
                self.send_sealed(Kind::Awareness, &update.encode_v1());
            } else {
                self.io.push_back(Io::SendBinary(sync::encode_awareness(&update).to_vec()));
            }
        }
    }

    fn send_step1(&mut self) {
        self.syncing = true;
        self.step1_covers = self.edits_sent;
        self.io.push_back(Io::SendBinary(sync::encode_step1(&self.board.state_vector()).to_vec()));
    }

    /// The socket closed with `code`. `random` in `[0, 1)` spreads the reconnect delay.
    pub fn handle_close(&mut self, code: u16, random: f64, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        // Whatever was asked on the old socket will not be answered.
        self.syncing = false;
        if let Some(sealing) = &mut self.sealing {
            sealing.synced = false;
        }
        let opened = match self.link {
            Link::Connecting { opened } => opened,
            Link::Waiting | Link::Welcomed => true,
            // Closing an old socket, or after the end: nothing more to do.
            Link::Idle | Link::Retrying { .. } | Link::Probing | Link::Finished(_) => return,
        };
        match (close::reconnect_after(code), code) {
            (Reconnect::Never, close::MEETING_ENDED) => self.end(None),
            (Reconnect::Never, close::REMOVED) => self.finish(ConnectionStatus::Removed, Some(code), None),
            (Reconnect::Never, close::LINK_RENEWED) => self.finish(ConnectionStatus::LinkRenewed, Some(code), None),
            (Reconnect::Never, _) => {
                self.finish(ConnectionStatus::Refused, Some(code), Some(Reason::of_close(code)));
            }
            _ if !opened => {
                // The browser hides why a handshake failed; a plain GET tells 410 from 401.
                self.link = Link::Probing;
                self.heard_ms = now_ms;
                self.io.push_back(Io::Probe);
            }
            (Reconnect::Later, _) => self.retry(random, now_ms, Some(code), Reason::of_close(code), true),
            (Reconnect::Now, _) => self.retry(random, now_ms, Some(code), Reason::of_close(code), false),
        }
    }

    /// The answer to [`Io::Probe`]: the HTTP status, or `None` when the server could not be
    /// reached at all.
    pub fn handle_probe(&mut self, status: Option<u16>, random: f64, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        if self.link != Link::Probing {
            return;
        }
        match status {
            Some(410) => self.end(None),
            // A bad link, an unknown room, a refused page origin or a bad name: trying again
            // cannot help.
            Some(code @ (400 | 401 | 403 | 404)) => {
                let reason = match code {
                    400 => Reason::BadName,
                    403 => Reason::OriginRefused,
                    _ => Reason::BadLink,
                };
                self.finish(ConnectionStatus::InvalidLink, Some(code), Some(reason));
            }
            Some(code @ (429 | 503)) => self.retry(random, now_ms, Some(code), Reason::ServerBusy, true),
            Some(code) => self.retry(random, now_ms, Some(code), Reason::ConnectionLost, false),
            None => self.retry(random, now_ms, None, Reason::Unreachable, false),
        }
    }

    /// Schedules the next attempt; `later` when the server asked for a longer pause.
    fn retry(&mut self, random: f64, now_ms: u64, code: Option<u16>, reason: Reason, later: bool) {
        let delay = if later { self.backoff.next_later_delay_ms(random) } else { self.backoff.next_delay_ms(random) };
        self.link = Link::Retrying { at_ms: now_ms + delay };
        self.lost = Some(reason);
        self.events.push_back(Event::Connection {
            status: ConnectionStatus::Reconnecting,
            retry_in_ms: Some(delay),
            reason: Some(reason),
            code,
        });
    }

    /// When [`Session::handle_timeout`] should next be called: the next attempt, or when the
    /// current socket (attempt, probe) will count as stalled if nothing is heard.
    /// It is also when our awareness state is due for renewal, if that comes first.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.link {
            Link::Retrying { at_ms } => Some(at_ms),
            Link::Welcomed => {
                let silent = self.heard_ms.saturating_add(SILENCE_LIMIT_MS);
                Some(self.awareness.renew_at().map_or(silent, |renew| renew.min(silent)))
            }
            Link::Connecting { .. } | Link::Waiting | Link::Probing => {
                Some(self.heard_ms.saturating_add(SILENCE_LIMIT_MS))
            }
            Link::Idle | Link::Finished(_) => None,
        }
    }

    /// Time passed: reconnects when the backoff delay is over, and gives up on a socket (or a
    /// probe) that stayed silent for [`SILENCE_LIMIT_MS`]. `random` in `[0, 1)` spreads the
    /// delay of the next attempt.
    pub fn handle_timeout(&mut self, now_ms: u64, random: f64) {
        self.clock_ms = self.clock_ms.max(now_ms);
        if self.link == Link::Welcomed
            && !self.is_silent(now_ms)
            && self.awareness.renew_at().is_some_and(|at| now_ms >= at)
        {
            self.publish_awareness(now_ms);
        }
        match self.link {
            Link::Retrying { at_ms } if now_ms >= at_ms => self.connect(now_ms),
            Link::Connecting { .. } | Link::Waiting | Link::Welcomed | Link::Probing if self.is_silent(now_ms) => {
                self.drop_stalled();
                self.retry(random, now_ms, None, Reason::NoAnswer, false);
            }
            _ => {}
        }
    }

    fn is_silent(&self, now_ms: u64) -> bool {
        now_ms >= self.heard_ms.saturating_add(SILENCE_LIMIT_MS)
    }

    /// Forgets a socket (or probe) that went silent.
    fn drop_stalled(&mut self) {
        self.syncing = false;
        if let Some(sealing) = &mut self.sealing {
            sealing.synced = false;
        }
        if self.link != Link::Probing {
            self.io.push_back(Io::Close);
        }
    }

    /// Reconnects at once when that can help: while waiting out the backoff, while an attempt
    /// to reconnect has not been answered yet (it may be stuck on the network that failed), or
    /// when the socket has been silent past [`SILENCE_LIMIT_MS`] (a page that slept, whose
    /// timers did not run). Called when the browser goes online again, when the page becomes
    /// visible, and by the "Reconnect now" button. Returns whether it reconnected.
    pub fn reconnect_now(&mut self, now_ms: u64) -> bool {
        match self.link {
            Link::Retrying { .. } => {}
            Link::Connecting { .. } | Link::Probing if self.lost.is_some() => self.drop_stalled(),
            Link::Connecting { .. } | Link::Waiting | Link::Welcomed | Link::Probing if self.is_silent(now_ms) => {
                self.drop_stalled();
                self.lost = Some(Reason::NoAnswer);
            }
            _ => return false,
        }
        self.connect(now_ms);
        true
    }

    /// The meeting ended: wipe the board, forget the token, never reconnect.
    fn end(&mut self, reason: Option<Reason>) {
        if self.link == Link::Finished(ConnectionStatus::Ended) {
            return;
        }
        self.board.wipe();
        self.events.push_back(Event::Board);
        self.link = Link::Finished(ConnectionStatus::Ended);
        self.forget();
        self.events.push_back(Event::Connection {
            status: ConnectionStatus::Ended,
            retry_in_ms: None,
            reason,
            code: None,
        });
        self.io.push_back(Io::Close);
    }

    /// A final state other than the end of the meeting. A member who was removed or refused
    /// keeps no copy of the board either.
    fn finish(&mut self, status: ConnectionStatus, code: Option<u16>, reason: Option<Reason>) {
        if self.is_finished() {
            return;
        }
        self.board.wipe();
        self.events.push_back(Event::Board);
        self.link = Link::Finished(status);
        self.forget();
        self.events.push_back(Event::Connection { status, retry_in_ms: None, reason, code });
        self.io.push_back(Io::Close);
    }

    fn forget(&mut self) {
        // The sheet stays, so a leader can still download it once the meeting has ended;
        // everyone's presence ended here.
        self.attendance.close_all(self.clock_ms);
        self.awareness.reset();
        if let Some(sealing) = &mut self.sealing {
            sealing.forget_log();
        }
        self.state = None;
        self.member_id = None;
        self.role = None;
        if self.resume.take().is_some() {
            self.events.push_back(Event::Resume { token: None });
        }
    }

    /// Leaves the room for good (the tab is closing, or the user left).
    pub fn leave(&mut self) {
        if !self.is_finished() {
            self.link = Link::Finished(ConnectionStatus::Left);
            self.status(ConnectionStatus::Left);
            self.io.push_back(Io::Close);
        }
    }

    /// Whether we are in the room, so that commands can be sent.
    pub fn is_connected(&self) -> bool {
        self.link == Link::Welcomed
    }

    /// Whether the session reached a final state.
    pub fn is_finished(&self) -> bool {
        matches!(self.link, Link::Finished(_))
    }

    /// Sends a room command. `grant_floor` and `next_speaker` without `if_version` get the
    /// version of the state on screen, so two leaders clicking at once give the floor once.
    pub fn command(&mut self, mut message: ClientMessage) -> Result<(), CommandError> {
        if matches!(message, ClientMessage::Hello { .. }) {
            return Err(CommandError::NotACommand);
        }
        if self.link != Link::Welcomed {
            return Err(CommandError::NotConnected);
        }
        let shown = self.state.as_ref().map(|s| s.version);
        if let ClientMessage::GrantFloor { if_version: if_version @ None, .. }
        | ClientMessage::NextSpeaker { if_version: if_version @ None } = &mut message
        {
            *if_version = shown;
        }
        self.io.push_back(Io::SendText(to_json(&message)));
        Ok(())
    }

    /// Whether the room state lets us write on the board now.
    pub fn can_write(&self) -> bool {
        self.may_write().is_ok()
    }

    /// Whether the room state lets us write on the board now, and if not, why: the server's
    /// own rule ([`rules::may_write`]) applied to the state on screen. While reconnecting the
    /// last state holds, so edits made meanwhile wait in the board.
    pub fn may_write(&self) -> Result<(), Refusal> {
        // Outside the room the stage does not matter: the answer is "not joined" or "in the lobby".
        let outside = Stage { phase: Phase::Gathering, board_locked: false };
        match self.link {
            Link::Idle | Link::Finished(_) => rules::may_write(None, &outside),
            Link::Waiting => {
                let role = self.role.unwrap_or(Role::Member);
                let seat = Seat { role, admitted: false, presenter: false, connected: true };
                rules::may_write(Some(&seat), &outside)
            }
            _ => rules::may_write(self.seat().as_ref(), &self.stage().unwrap_or(outside)),
        }
    }

    /// Our seat in the room state on screen.
    fn seat(&self) -> Option<Seat> {
        let (state, me) = (self.state.as_ref()?, self.member_id.as_deref()?);
        seat_of(state, me, self.role)
    }

    fn stage(&self) -> Option<Stage> {
        self.state.as_ref().map(|s| Stage { phase: s.phase.name, board_locked: s.board_locked })
    }

    /// What we may do now, by the rules: our own controls and, for a leader, each member's
    /// menu. `None` until we are in the room.
    pub fn actions(&self) -> Option<Actions> {
        let (state, me) = (self.state.as_ref()?, self.member_id.as_deref()?);
        let seat = seat_of(state, me, self.role)?;
        let stage = self.stage()?;
        let floor = state.floor.as_ref().map(|f| f.member.as_str());
        let mut own = rules::own_actions(&seat, &stage, floor == Some(me));
        own.write = self.may_write().into();
        let members = state
            .members
            .iter()
            .filter_map(|m| {
                let target = Target {
                    seat: seat_of(state, &m.id, None)?,
                    is_self: m.id == me,
                    holds_floor: floor == Some(m.id.as_str()),
                    hand_raised: state.queue.iter().any(|h| h.member == m.id),
                };
                Some((m.id.clone(), rules::member_actions(&seat, &target)))
            })
            .collect();
        Some(Actions { own, members })
    }

    /// An editor's text changed to `value`; `caret` is its caret after the edit. The edit is
    /// applied to the board and sent when we are in the room; while reconnecting it waits in
    /// the board and travels with the sync on reconnect.
    pub fn edit_text(&mut self, key: &TextKey, value: &str, caret: Option<u32>) -> Result<(), EditError> {
        self.may_write().map_err(EditError::ReadOnly)?;
        let update = self.board.set_text(key, value, caret).map_err(|_| EditError::UnknownCard)?;
        if let Some(update) = update {
            self.send_update(&update);
        }
        Ok(())
    }

    /// Adds an observation card with `body`, tagged with the current phase and our name.
    /// `id` must be unique (the driver makes it from random bytes).
    pub fn add_card(&mut self, id: &str, body: &str, now_ms: u64) -> Result<(), EditError> {
        self.may_write().map_err(EditError::ReadOnly)?;
        let (state, me) = (self.state.as_ref().expect("can_write"), self.member_id.as_deref().expect("can_write"));
        // In a sealed room our name is ours before the room shows it sealed.
        let author = match &self.sealing {
            Some(sealing) => sealing.name.clone(),
            None => state.members.iter().find(|m| m.id == me).map(|m| m.name.clone()).unwrap_or_default(),
        };
        let phase = serde_json::to_value(state.phase.name).ok();
        let phase = phase.as_ref().and_then(|p| p.as_str()).unwrap_or_default().to_owned();
        let update = self.board.add_card(NewCard { id, author: &author, phase: &phase, body, created_ms: now_ms });
        self.send_update(&update);
        self.events.push_back(Event::Board);
        Ok(())
    }

    fn send_update(&mut self, update: &[u8]) {
        if self.link != Link::Welcomed {
            return;
        }
        match &self.sealing {
            // Until the log came, the edit waits in the board: what the log lacks goes out
            // when it comes.
            Some(sealing) if !sealing.synced => {}
            Some(_) => {
                self.edits_sent += 1;
                self.send_sealed(Kind::Update, update);
                self.maybe_compact();
            }
            None => {
                self.edits_sent += 1;
                self.io.push_back(Io::SendBinary(sync::encode_update(update).to_vec()));
            }
        }
    }

    /// Our caret moved to `anchor..head` (UTF-16 units) of `key`'s text at `now_ms`: tells
    /// the room, as an awareness state. When we may not write, or the text does not exist, our
    /// cursor is cleared instead. Returns whether a cursor is shown.
    pub fn set_cursor(&mut self, key: TextKey, anchor: u32, head: u32, now_ms: u64) -> bool {
        let shown = self.can_write() && self.awareness.set_cursor(&self.board, key, anchor, head);
        if !shown {
            self.awareness.clear_cursor();
        }
        self.publish_awareness(now_ms);
        shown
    }

    /// Our editor lost focus: our cursor is no longer shown.
    pub fn clear_cursor(&mut self, now_ms: u64) {
        if self.awareness.has_cursor() {
            self.awareness.clear_cursor();
            self.publish_awareness(now_ms);
        }
    }

    /// The cursors of the others in the room whose awareness is fresh at `now_ms`, resolved
    /// against our copy of the board.
    pub fn cursors(&self, now_ms: u64) -> Vec<RemoteCursor> {
        if self.link != Link::Welcomed {
            return Vec::new();
        }
        self.awareness.cursors(&self.board, now_ms)
    }

    /// The attendance sheet at `now_ms`: empty unless we have been a leader in this meeting.
    pub fn attendance(&self, now_ms: u64) -> Sheet {
        self.attendance.sheet(now_ms)
    }

    /// The attendance sheet at `now_ms` as CSV.
    pub fn attendance_csv(&self, now_ms: u64) -> String {
        self.attendance.csv(now_ms)
    }

    /// Whom `next_speaker` would give the floor to now, and whom it would pass over, by the
    /// server's rule ([`rules::next_speaker`]) applied to the state on screen. `None` when no
    /// raised hand may take the floor.
    pub fn next_speaker(&self) -> Option<NextSpeaker> {
        let state = self.state.as_ref()?;
        let stage = self.stage()?;
        let candidates = state.queue.iter().filter_map(|entry| {
            let view = state.members.iter().find(|m| m.id == entry.member)?;
            Some(Candidate { member: &entry.member, seat: seat_of(state, &entry.member, None)?, status: view.status })
        });
        rules::next_speaker(candidates, &stage)
    }

    /// The board as Markdown, the file a leader exports (the same as the server's export of a
    /// plain room: [`balint_proto::board::export_markdown`], cards grouped by the phases of the
    /// room's template), under `title`. `None` while this copy may lack part of the board: out
    /// of the room, or before this connection brought the server's log (a sealed room) or the
    /// answer to our sync step 1 (a plain room).
    pub fn export_markdown(&self, title: Option<&str>) -> Option<String> {
        let state = self.state.as_ref()?;
        let whole = self.is_connected()
            && match &self.sealing {
                Some(sealing) => sealing.synced,
                None => !self.syncing,
            };
        whole.then(|| self.board.to_markdown(title, state.template))
    }

    /// The next thing to do.
    pub fn poll_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    /// The next thing to show.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The board.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// The latest room state, while in the room.
    pub fn state(&self) -> Option<&RoomState> {
        self.state.as_ref()
    }

    /// Our member id, once welcomed or waiting.
    pub fn member_id(&self) -> Option<&str> {
        self.member_id.as_deref()
    }
}

/// A sealed room's key and the server's log as this client knows it (`docs/PROTOCOL.md` §13).
struct Sealing {
    key: RoomKey,
    room: String,
    /// Our display name, which travels only sealed (`set_sealed_name`).
    name: String,
    /// Our sequence numbers: a random epoch for this page load, and a counter.
    seq: Sequence,
    /// The log came on this socket: local edits go out as entries from now on.
    synced: bool,
    /// The ids of the log's entries as this client knows it, in order: the log frame's, then
    /// those forwarded since and our own. A snapshot covers them.
    log: Vec<(String, u64)>,
    /// Ciphertext logged since the last snapshot (or the log frame).
    bytes_since_snapshot: usize,
    /// An entry of the log failed to open: this client does not hold the whole board, so it
    /// never compacts (a snapshot would erase what it could not read).
    unreadable: bool,
    /// [`Event::Unreadable`] was sent (once per session).
    reported: bool,
}

impl Sealing {
    /// Opens the sealed names and title of `state` in place: each `name` becomes the name its
    /// member sealed, checked against the name rules, and `title` the title. A value that does
    /// not open, or breaks the rules, leaves an empty name (the UI shows a placeholder) and no
    /// title: never a text the server could have chosen.
    fn open_state(&self, state: &mut RoomState) {
        let open = |id: &str, value: Option<&String>| {
            value.and_then(|v| seal::open_name(&self.key, &self.room, id, v).ok()).unwrap_or_default()
        };
        for member in &mut state.members {
            member.name = open(&member.id, member.sealed_name.as_ref());
        }
        for waiting in state.waiting.iter_mut().flatten() {
            waiting.name = open(&waiting.id, waiting.sealed_name.as_ref());
        }
        state.title =
            state.sealed_title.as_deref().and_then(|v| seal::open_title(&self.key, &self.room, v).ok()).flatten();
    }

    fn forget_log(&mut self) {
        self.synced = false;
        self.log.clear();
        self.bytes_since_snapshot = 0;
        self.unreadable = false;
    }
}

/// Sealed rooms: the board travels as sealed entries (`docs/PROTOCOL.md` §13).
impl Session {
    /// A sealed frame arrived. Returns whether the board changed.
    fn handle_sealed(&mut self, frame: &[u8], now_ms: u64) -> bool {
        // The server never sends a bad frame; if one came anyway, there is nothing to answer.
        let Ok(frame) = sealed_frame::decode(frame) else { return false };
        let changed = match frame {
            sealed_frame::Frame::Log(entries) => self.take_log(entries),
            sealed_frame::Frame::Entry(entry) if entry.sealed.kind == Kind::Awareness => {
                self.take_awareness(&entry, now_ms);
                false
            }
            sealed_frame::Frame::Entry(entry) => {
                let changed = self.take_entry(&entry, None);
                self.maybe_compact();
                changed
            }
            // Frames of the client's direction are never sent to it.
            sealed_frame::Frame::ClientEntry(_) | sealed_frame::Frame::Snapshot(_) => false,
        };
        if changed {
            self.events.push_back(Event::Board);
        }
        changed
    }

    /// The log, on a new socket: every logged entry, in order. A reconnecting client then
    /// sends, as one entry, what its board holds that the log lacks: edits made while offline,
    /// or sent on a socket that dropped before the server had them (nothing acknowledges an
    /// entry). This is what the answer to the server's sync step 1 does in a plain room.
    fn take_log(&mut self, entries: Vec<Entry>) -> bool {
        let Some(sealing) = &mut self.sealing else { return false };
        sealing.forget_log();
        // A board that held nothing needs no comparison with the log.
        let mut server = (!self.board.is_empty()).then(Board::new);
        let mut changed = false;
        for entry in &entries {
            changed |= self.take_entry(entry, server.as_mut());
        }
        let Some(sealing) = &mut self.sealing else { return changed };
        sealing.synced = true;
        if let Some(mut server) = server {
            let before = server.summary();
            let missing = self.board.update_since(&server.state_vector());
            let _ = server.apply_update(&missing);
            if server.summary() != before && self.can_write() {
                self.edits_sent += 1;
                self.send_sealed(Kind::Update, &missing);
            }
        }
        self.maybe_compact();
        changed
    }

    /// A logged entry (an update or a snapshot): opened, checked and applied to the board (and
    /// to `server`, the copy of the log being read). Returns whether the board changed.
    fn take_entry(&mut self, entry: &Entry, server: Option<&mut Board>) -> bool {
        let Some(sealing) = &mut self.sealing else { return false };
        let id = (entry.sender.clone(), entry.sealed.seq);
        if sealing.log.contains(&id) {
            return false;
        }
        sealing.log.push(id);
        sealing.bytes_since_snapshot += entry.sealed.ciphertext.len();
        match seal::open_update(&sealing.key, &sealing.room, entry) {
            Ok(update) => {
                if let Some(server) = server {
                    let _ = server.apply_update(&update);
                }
                self.board.apply_update(&update).is_ok()
            }
            Err(_) => {
                sealing.unreadable = true;
                self.report_unreadable();
                false
            }
        }
    }

    /// Someone's awareness state, sealed.
    fn take_awareness(&mut self, entry: &Entry, now_ms: u64) {
        let Some(sealing) = &self.sealing else { return };
        let opened = seal::open(&sealing.key, &sealing.room, &entry.sender, &entry.sealed)
            .ok()
            .and_then(|plaintext| sync::decode_awareness(&plaintext).ok());
        let Some(update) = opened else {
            self.report_unreadable();
            return;
        };
        let applied = self.awareness.apply(&update, self.board.client_id(), now_ms);
        if applied.republish {
            self.publish_awareness(now_ms);
        }
        if applied.changed {
            self.events.push_back(Event::Cursors);
        }
    }

    fn report_unreadable(&mut self) {
        if let Some(sealing) = &mut self.sealing {
            if !sealing.reported {
                sealing.reported = true;
                self.events.push_back(Event::Unreadable);
            }
        }
    }

    /// Seals `plaintext` as our next entry of `kind` and sends it; an update is added to the
    /// log as we know it.
    fn send_sealed(&mut self, kind: Kind, plaintext: &[u8]) {
        let (Some(sealing), Some(me)) = (&mut self.sealing, self.member_id.as_deref()) else { return };
        let Ok(seq) = sealing.seq.next_seq() else { return };
        let Ok(value) = seal::seal(&sealing.key, &sealing.room, me, seq, kind, plaintext) else { return };
        if kind == Kind::Update {
            sealing.log.push((me.to_owned(), seq));
            sealing.bytes_since_snapshot += value.ciphertext.len();
        }
        self.io.push_back(Io::SendBinary(sealed_frame::encode_client_entry(&value).to_vec()));
    }

    /// Uploads a snapshot of the board when the log has grown enough since the last one, this
    /// client holds the whole board, may write, and is the one member chosen to compact.
    fn maybe_compact(&mut self) {
        let Some(sealing) = &self.sealing else { return };
        let grown = sealing.log.len() > COMPACT_AFTER_ENTRIES || sealing.bytes_since_snapshot > COMPACT_AFTER_BYTES;
        if !sealing.synced
            || sealing.unreadable
            || sealing.log.len() < 2
            || !grown
            || self.link != Link::Welcomed
            || self.board.is_waiting()
            || !self.is_compactor()
        {
            return;
        }
        let me = self.member_id.clone().expect("a compactor is in the room");
        let snapshot = self.board.update_since(&Default::default());
        let sealing = self.sealing.as_mut().expect("checked above");
        let Ok(seq) = sealing.seq.next_seq() else { return };
        let Ok(value) = seal::seal(&sealing.key, &sealing.room, &me, seq, Kind::Snapshot, &snapshot) else { return };
        let covers = std::mem::take(&mut sealing.log);
        let frame = sealed_frame::encode_snapshot(&SnapshotUpload { covers, sealed: value });
        // Whether or not it goes out, the count starts again: a board too large for one frame
        // is not sealed again at every entry.
        sealing.log = vec![(me, seq)];
        sealing.bytes_since_snapshot = 0;
        if frame.len() <= MAX_SNAPSHOT_FRAME_BYTES {
            self.io.push_back(Io::SendBinary(frame.to_vec()));
        }
    }

    /// Whether we are the member who compacts the log: the first leader in the room's list
    /// who is connected and may write, else the first such member. One compactor, because a
    /// snapshot is not forwarded: another client's later snapshot would name entries that the
    /// first one replaced, and be ignored.
    fn is_compactor(&self) -> bool {
        let (Some(state), Some(me), Some(stage)) = (self.state.as_ref(), self.member_id.as_deref(), self.stage())
        else {
            return false;
        };
        let writers = state.members.iter().filter(|m| {
            matches!(m.status, Status::Here | Status::Away)
                && seat_of(state, &m.id, None).is_some_and(|seat| rules::may_write(Some(&seat), &stage).is_ok())
        });
        let chosen = writers.clone().find(|m| m.role == Role::Leader).or_else(|| writers.clone().next());
        chosen.is_some_and(|m| m.id == me)
    }
}

/// The seat of member `id` in `state`; `role` stands in when the member is not listed.
fn seat_of(state: &RoomState, id: &str, role: Option<Role>) -> Option<Seat> {
    let view = state.members.iter().find(|m| m.id == id);
    Some(Seat {
        role: view.map(|m| m.role).or(role)?,
        // The members of a state are admitted; those in the lobby are listed apart.
        admitted: true,
        presenter: state.presenter.as_deref() == Some(id),
        connected: view.is_none_or(|m| m.status != Status::Reconnecting),
    })
}

/// Whether a v1 update carries nothing (what a peer that lacks nothing is sent).
fn is_empty_update(update: &[u8]) -> bool {
    yrs::Update::decode_v1(update).is_ok_and(|u| u.is_empty())
}

fn to_json(message: &ClientMessage) -> String {
    // Plain strings, numbers and enums: serializing cannot fail.
    serde_json::to_string(message).expect("client messages always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use balint_proto::rules::{Reason as RefusalReason, Verdict};
    use serde_json::{json, Value};

    const NOW: u64 = 1_767_261_600_000;

    fn state(version: u64, extra: Value) -> Value {
        let mut state = json!({
            "version": version, "title": "Tuesday", "template": "balint", "ephemeral": true,
            "phase": {"name": "questions", "started_at_ms": NOW, "duration_secs": 600},
            "presenter": null,
            "members": [
                {"id": "me", "name": "Ann", "role": "member", "status": "here"},
                {"id": "lea", "name": "Lea", "role": "leader", "status": "here"}
            ],
            "queue": [], "floor": null, "speaking_limit_secs": null, "fair_order": false,
            "lobby": false, "board_locked": false
        });
        for (k, v) in extra.as_object().unwrap() {
            state[k] = v.clone();
        }
        state
    }

    fn welcome(token: &str, version: u64) -> String {
        json!({"type": "welcome", "member_id": "me", "role": "member", "resume_token": token,
               "state": state(version, json!({}))})
        .to_string()
    }

    fn drain_io(s: &mut Session) -> Vec<Io> {
        std::iter::from_fn(|| s.poll_io()).collect()
    }

    fn drain_events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn texts(io: &[Io]) -> Vec<Value> {
        io.iter()
            .filter_map(|i| match i {
                Io::SendText(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn binaries(io: &[Io]) -> Vec<Vec<Message>> {
        io.iter()
            .filter_map(|i| match i {
                Io::SendBinary(b) => Some(sync::decode_frame(b).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// A session that went through hello and welcome.
    fn joined() -> Session {
        let mut s = Session::new(None);
        s.start(NOW);
        s.handle_open(NOW);
        s.handle_text(&welcome("tok1", 1), NOW);
        drain_io(&mut s);
        drain_events(&mut s);
        s
    }

    #[test]
    fn hello_is_the_first_frame_and_step1_follows_welcome() {
        let mut s = Session::new(None);
        s.start(NOW);
        assert_eq!(drain_io(&mut s), vec![Io::Connect]);
        s.handle_open(NOW);
        let io = drain_io(&mut s);
        assert_eq!(texts(&io), vec![json!({"type": "hello"})]);
        assert!(binaries(&io).is_empty(), "nothing binary before the answer to hello");

        s.handle_text(&welcome("tok1", 1), NOW);
        let io = drain_io(&mut s);
        let frames = binaries(&io);
        assert!(matches!(frames[0][..], [Message::Sync(SyncMessage::SyncStep1(_))]));
        // Then who we are, as an awareness state with no cursor yet.
        match &frames[1..] {
            [m] => match &m[..] {
                [Message::Awareness(update)] => {
                    let entry = &update.clients[&yrs::block::ClientID::new(s.board().client_id())];
                    let state: Value = serde_json::from_str(&entry.json).unwrap();
                    assert_eq!(state["user"]["name"], "Ann");
                    assert_eq!(state["cursor"], Value::Null);
                }
                other => panic!("expected our awareness state, got {other:?}"),
            },
            other => panic!("expected one awareness frame after step 1, got {other:?}"),
        }
        let events = drain_events(&mut s);
        assert!(events.contains(&Event::Resume { token: Some("tok1".into()) }));
        assert!(events.iter().any(|e| matches!(e, Event::State { me, can_write: true, .. } if me == "me")));
        assert_eq!(s.member_id(), Some("me"));
    }

    #[test]
    fn an_update_that_cannot_be_integrated_makes_the_session_sync_once() {
        let mut s = joined();
        // The answer to the step 1 sent at welcome.
        s.handle_binary(&sync::encode_step2(&Board::new().update_since(&Default::default())), NOW);
        let mut server = Board::new();
        let _first = server.set_text(&TextKey::Notes, "a", None).unwrap().unwrap();
        let second = server.set_text(&TextKey::Notes, "ab", None).unwrap().unwrap();
        let third = server.set_text(&TextKey::Notes, "abc", None).unwrap().unwrap();
        // The second edit arrives without the first: it waits, and the session asks.
        s.handle_binary(&sync::encode_update(&second), NOW);
        let frames = binaries(&drain_io(&mut s));
        assert!(
            matches!(frames[..], [ref m] if matches!(m[..], [Message::Sync(SyncMessage::SyncStep1(_))])),
            "{frames:?}"
        );
        // Still waiting, but a step 1 is already out: no second one.
        s.handle_binary(&sync::encode_update(&third), NOW);
        assert!(binaries(&drain_io(&mut s)).is_empty());
        // The server's answer fills the gap.
        s.handle_binary(&sync::encode_step2(&server.update_since(&s.board().state_vector())), NOW);
        assert_eq!(s.board().notes(), "abc");
        assert!(!s.board().is_waiting());
        assert!(binaries(&drain_io(&mut s)).is_empty());
    }

    #[test]
    fn the_servers_step1_is_answered_with_step2_and_updates_apply() {
        let mut s = joined();
        let mut server = Board::new();
        let update = server.set_text(&TextKey::Notes, "from the room", None).unwrap().unwrap();
        // The server's step 1 (empty board) gets our step 2.
        assert!(!s.handle_binary(&sync::encode_step1(&server.state_vector()), NOW));
        assert!(matches!(
            binaries(&drain_io(&mut s))[..],
            [ref m] if matches!(m[..], [Message::Sync(SyncMessage::SyncStep2(_))])
        ));
        assert!(s.handle_binary(&sync::encode_step2(&update), NOW));
        assert_eq!(s.board().notes(), "from the room");
        assert!(drain_events(&mut s).contains(&Event::Board));
    }

    #[test]
    fn local_edits_are_sent_as_updates() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "hello", Some(5)).unwrap();
        let frames = binaries(&drain_io(&mut s));
        let [ref messages] = frames[..] else { panic!("one frame: {frames:?}") };
        let [Message::Sync(SyncMessage::Update(update))] = &messages[..] else { panic!("{messages:?}") };
        let mut other = Board::new();
        other.apply_update(update).unwrap();
        assert_eq!(other.notes(), "hello");

        s.add_card("card-1", "first thought", NOW).unwrap();
        assert_eq!(binaries(&drain_io(&mut s)).len(), 1);
        let cards = s.board().cards();
        assert_eq!((cards[0].author.as_str(), cards[0].phase.as_str()), ("Ann", "questions"));
    }

    #[test]
    fn older_snapshots_are_ignored() {
        let mut s = joined();
        s.handle_text(&json!({"type": "state", "state": state(5, json!({"fair_order": true}))}).to_string(), NOW);
        s.handle_text(&json!({"type": "state", "state": state(4, json!({"fair_order": false}))}).to_string(), NOW);
        assert_eq!(s.state().unwrap().version, 5);
        assert!(s.state().unwrap().fair_order);
        let states = drain_events(&mut s).into_iter().filter(|e| matches!(e, Event::State { .. })).count();
        assert_eq!(states, 1);
    }

    #[test]
    fn floor_commands_carry_the_version_on_screen() {
        let mut s = joined();
        s.handle_text(&json!({"type": "state", "state": state(7, json!({}))}).to_string(), NOW);
        s.command(ClientMessage::NextSpeaker { if_version: None }).unwrap();
        s.command(ClientMessage::GrantFloor { member: "lea".into(), if_version: Some(3) }).unwrap();
        s.command(ClientMessage::RaiseHand {}).unwrap();
        assert_eq!(
            texts(&drain_io(&mut s)),
            vec![
                json!({"type": "next_speaker", "if_version": 7}),
                json!({"type": "grant_floor", "member": "lea", "if_version": 3}),
                json!({"type": "raise_hand"}),
            ]
        );
        assert_eq!(s.command(ClientMessage::Hello { resume: None }), Err(CommandError::NotACommand));
    }

    #[test]
    fn a_drop_reconnects_with_backoff_and_resumes_with_the_token() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "before", Some(6)).unwrap();
        drain_io(&mut s);
        s.handle_close(1006, 0.0, NOW);
        let events = drain_events(&mut s);
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Connection { status: ConnectionStatus::Reconnecting, retry_in_ms: Some(250), .. }
        )));
        assert_eq!(s.poll_timeout(), Some(NOW + 250));
        // Edits while away stay local, and are not sent on a closed socket.
        s.edit_text(&TextKey::Notes, "before, during", Some(14)).unwrap();
        assert!(drain_io(&mut s).is_empty());
        s.handle_timeout(NOW + 249, 0.0);
        assert!(drain_io(&mut s).is_empty(), "not before the delay");
        s.handle_timeout(NOW + 250, 0.0);
        assert_eq!(drain_io(&mut s), vec![Io::Connect]);

        s.handle_open(NOW);
        assert_eq!(texts(&drain_io(&mut s)), vec![json!({"type": "hello", "resume": "tok1"})]);
        s.handle_text(&welcome("tok1", 9), NOW);
        drain_io(&mut s);
        // The server's step 1 from before the drop: our answer carries the edit made meanwhile.
        let server = Board::new();
        s.handle_binary(&sync::encode_step1(&server.state_vector()), NOW);
        let frames = binaries(&drain_io(&mut s));
        let [Message::Sync(SyncMessage::SyncStep2(update))] = &frames[0][..] else { panic!() };
        let mut other = Board::new();
        other.apply_update(update).unwrap();
        assert_eq!(other.notes(), "before, during");
    }

    #[test]
    fn failed_attempts_back_off_further_until_one_succeeds() {
        let mut s = joined();
        let mut now = NOW;
        let mut delays = vec![];
        for _ in 0..4 {
            s.handle_close(1006, 0.999, now);
            now = s.poll_timeout().unwrap();
            delays.push(now);
            s.handle_timeout(now, 0.0);
            s.handle_open(NOW);
        }
        let gaps: Vec<u64> = delays.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] > g[0]), "growing: {gaps:?}");
        s.handle_text(&welcome("tok1", 2), NOW);
        s.handle_close(1012, 0.999, now);
        assert!(s.poll_timeout().unwrap() - now < 500, "reset after a success");
    }

    #[test]
    fn the_end_wipes_the_board_and_forgets_the_token() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "confidential", None).unwrap();
        drain_events(&mut s);
        s.handle_text(r#"{"type":"ended","reason":"ended_by_leader"}"#, NOW);
        assert!(s.board().is_empty());
        assert!(s.state().is_none());
        let events = drain_events(&mut s);
        assert!(events.contains(&Event::Resume { token: None }));
        assert!(events.contains(&Event::Connection {
            status: ConnectionStatus::Ended,
            retry_in_ms: None,
            reason: Some(Reason::EndedByLeader),
            code: None,
        }));
        s.handle_close(close::MEETING_ENDED, 0.5, NOW);
        assert_eq!(s.poll_timeout(), None, "never reconnects");
        assert!(drain_events(&mut s).is_empty(), "the end is announced once");
        assert_eq!(s.edit_text(&TextKey::Notes, "more", None), Err(read_only(RefusalReason::NotJoined)));
        assert_eq!(s.command(ClientMessage::RaiseHand {}), Err(CommandError::NotConnected));
    }

    #[test]
    fn close_4410_alone_also_ends_and_4403_removes() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "x", None).unwrap();
        s.handle_close(close::MEETING_ENDED, 0.5, NOW);
        assert!(s.board().is_empty());
        assert!(s.is_finished());

        let mut s = joined();
        s.handle_close(close::REMOVED, 0.5, NOW);
        assert!(s.is_finished());
        assert_eq!(s.poll_timeout(), None);
        assert!(drain_events(&mut s)
            .iter()
            .any(|e| matches!(e, Event::Connection { status: ConnectionStatus::Removed, .. })));
    }

    #[test]
    fn a_handshake_that_fails_is_probed() {
        for (status, expect) in [
            (Some(410), Some(ConnectionStatus::Ended)),
            (Some(401), Some(ConnectionStatus::InvalidLink)),
            (Some(404), Some(ConnectionStatus::InvalidLink)),
            (Some(403), Some(ConnectionStatus::InvalidLink)),
            (Some(503), None),
            (None, None),
        ] {
            let mut s = joined();
            s.handle_close(1006, 0.0, NOW);
            s.handle_timeout(NOW + 10_000, 0.0);
            drain_io(&mut s);
            // The socket never opened.
            s.handle_close(1006, 0.0, NOW + 10_000);
            assert_eq!(drain_io(&mut s), vec![Io::Probe]);
            drain_events(&mut s);
            s.handle_probe(status, 0.0, NOW + 10_000);
            match expect {
                Some(final_status) => {
                    assert!(s.is_finished(), "{status:?}");
                    let events = connection_events(&drain_events(&mut s));
                    let [(shown, reason, _)] = events[..] else { panic!("{status:?}: {events:?}") };
                    assert_eq!(shown, final_status, "{status:?}");
                    if final_status == ConnectionStatus::InvalidLink {
                        let expected = if status == Some(403) { Reason::OriginRefused } else { Reason::BadLink };
                        assert_eq!(reason, Some(expected), "{status:?}");
                    }
                }
                None => assert!(s.poll_timeout().is_some(), "{status:?} retries"),
            }
        }
    }

    #[test]
    fn the_lobby_holds_until_welcome() {
        let mut s = Session::new(None);
        s.start(NOW);
        s.handle_open(NOW);
        drain_io(&mut s);
        s.handle_text(r#"{"type":"waiting","member_id":"me","resume_token":"lobby-tok"}"#, NOW);
        assert!(drain_events(&mut s).contains(&Event::Resume { token: Some("lobby-tok".into()) }));
        assert_eq!(s.may_write().map_err(|r| r.reason), Err(RefusalReason::InLobby));
        assert_eq!(s.command(ClientMessage::RaiseHand {}), Err(CommandError::NotConnected));
        s.handle_text(&welcome("lobby-tok", 3), NOW);
        assert!(s.can_write());
    }

    fn read_only(reason: RefusalReason) -> EditError {
        EditError::ReadOnly(Refusal::new(ErrorCode::ReadOnly, reason))
    }

    #[test]
    fn write_permission_follows_the_room_state() {
        let mut s = joined();
        let mut set = |extra: Value, version: u64| {
            s.handle_text(&json!({"type": "state", "state": state(version, extra)}).to_string(), NOW);
            let event_says = drain_events(&mut s).iter().find_map(|e| match e {
                Event::State { can_write, actions, .. } => Some((*can_write, actions.own.write)),
                _ => None,
            });
            let verdict = s.may_write().map_err(|r| r.reason);
            assert_eq!(event_says, Some((verdict.is_ok(), Verdict::from(s.may_write()))), "the state event agrees");
            verdict
        };
        assert_eq!(set(json!({"presenter": "me"}), 2), Ok(()));
        assert_eq!(
            set(
                json!({"presenter": "me", "phase": {"name": "reflection", "started_at_ms": NOW, "duration_secs": 2100},
                "members": [{"id": "me", "name": "Ann", "role": "member", "status": "outside_circle"}]}),
                3
            ),
            Err(RefusalReason::PresenterInReflection)
        );
        assert_eq!(
            set(
                json!({"presenter": "me", "phase": {"name": "response", "started_at_ms": NOW, "duration_secs": 600}}),
                4
            ),
            Ok(())
        );
        assert_eq!(set(json!({"board_locked": true}), 5), Err(RefusalReason::BoardLocked));
        assert_eq!(
            set(json!({"members": [{"id": "me", "name": "Ann", "role": "observer", "status": "here"}]}), 6),
            Err(RefusalReason::Observer)
        );
        // Promoted to co-leader: a locked board is still writable.
        assert_eq!(
            set(
                json!({"board_locked": true, "members": [{"id": "me", "name": "Ann", "role": "leader", "status": "here"}]}),
                7
            ),
            Ok(())
        );
        s.handle_text(&json!({"type": "state", "state": state(8, json!({"board_locked": true}))}).to_string(), NOW);
        assert_eq!(s.edit_text(&TextKey::Notes, "no", None), Err(read_only(RefusalReason::BoardLocked)));
        assert_eq!(s.add_card("c", "no", NOW), Err(read_only(RefusalReason::BoardLocked)));
    }

    #[test]
    fn the_actions_on_screen_follow_the_rules() {
        let mut s = joined();
        let presenting = json!({"presenter": "me", "phase": {"name": "reflection", "started_at_ms": NOW, "duration_secs": 2100},
            "queue": [{"member": "lea", "raised_at_ms": NOW}]});
        s.handle_text(&json!({"type": "state", "state": state(2, presenting)}).to_string(), NOW);
        let actions = s.actions().unwrap();
        assert_eq!(actions.own.raise_hand.reason, Some(RefusalReason::PresenterInReflection));
        assert!(actions.own.hand_shown && !actions.own.lead && !actions.own.yield_floor);
        assert!(actions.members.values().all(|m| *m == MemberActions::default()), "a member has no leader menu");
        assert_eq!(
            serde_json::to_value(&actions).unwrap()["raise_hand"],
            json!({"allowed": false, "reason": "presenter_in_reflection"})
        );
        // The same room seen by the leader.
        let lead = json!({"type": "welcome", "member_id": "lea", "role": "leader", "resume_token": "t",
            "state": state(2, json!({"presenter": "me", "queue": [{"member": "me", "raised_at_ms": NOW}]}))})
        .to_string();
        let mut s = Session::new(None);
        s.start(NOW);
        s.handle_open(NOW);
        s.handle_text(&lead, NOW);
        let actions = s.actions().unwrap();
        assert!(actions.own.lead);
        let ann = actions.members["me"];
        assert!(ann.clear_presenter && !ann.make_presenter && ann.lower_hand && ann.kick && ann.grant_floor);
        let own = actions.members["lea"];
        assert!(!own.kick && !own.make_member && !own.lower_hand);
    }

    #[test]
    fn a_refused_edit_throws_the_copy_away_and_resyncs() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "diverged", None).unwrap();
        drain_io(&mut s);
        s.handle_text(r#"{"type":"error","code":"read_only","message":"the board is locked"}"#, NOW);
        assert!(s.board().is_empty());
        let frames = binaries(&drain_io(&mut s));
        let [Message::Sync(SyncMessage::SyncStep1(sv))] = &frames[0][..] else { panic!("{frames:?}") };
        assert_eq!(*sv, yrs::StateVector::default());
        assert!(drain_events(&mut s).iter().any(|e| matches!(e, Event::Error { code: ErrorCode::ReadOnly, .. })));
    }

    #[test]
    fn a_full_room_is_retried_and_said_so() {
        let mut s = joined();
        s.handle_close(close::ROOM_FULL, 0.0, NOW);
        assert!(drain_events(&mut s).iter().any(|e| matches!(
            e,
            Event::Connection { status: ConnectionStatus::Reconnecting, code: Some(close::ROOM_FULL), .. }
        )));
        assert!(s.poll_timeout().is_some());
    }

    #[test]
    fn an_edit_refused_for_a_full_board_also_resyncs() {
        let mut s = joined();
        s.edit_text(&TextKey::Notes, "one edit too many", None).unwrap();
        drain_io(&mut s);
        s.handle_text(r#"{"type":"error","code":"board_full","message":"the board is full"}"#, NOW);
        assert!(s.board().is_empty());
        assert_eq!(binaries(&drain_io(&mut s)).len(), 1, "a fresh sync step 1");
    }

    #[test]
    fn unknown_messages_are_ignored() {
        let mut s = joined();
        s.handle_text(r#"{"type":"from_the_future","x":1}"#, NOW);
        s.handle_text("not json", NOW);
        assert!(drain_events(&mut s).is_empty());
        assert!(!s.is_finished());
    }

    #[test]
    fn leaving_closes_and_never_reconnects() {
        let mut s = joined();
        s.leave();
        assert_eq!(drain_io(&mut s), vec![Io::Close]);
        s.handle_close(1000, 0.5, NOW);
        assert_eq!(s.poll_timeout(), None);
    }

    fn connection_events(events: &[Event]) -> Vec<(ConnectionStatus, Option<Reason>, Option<u64>)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Connection { status, reason, retry_in_ms, .. } => Some((*status, *reason, *retry_in_ms)),
                _ => None,
            })
            .collect()
    }

    fn heartbeat() -> &'static str {
        r#"{"type":"heartbeat"}"#
    }

    #[test]
    fn a_silent_server_is_noticed_and_the_session_reconnects() {
        let mut s = joined();
        assert_eq!(s.poll_timeout(), Some(NOW + SILENCE_LIMIT_MS), "the silence deadline is set from the welcome");
        // Heartbeats and board frames keep the connection alive.
        s.handle_text(heartbeat(), NOW + 5_000);
        s.handle_binary(&sync::encode_update(&Board::new().update_since(&Default::default())), NOW + 9_000);
        // Our awareness state is renewed before anyone takes it for gone.
        assert_eq!(s.poll_timeout(), Some(NOW + crate::awareness::RENEW_MS));
        s.handle_timeout(NOW + crate::awareness::RENEW_MS, 0.0);
        let renewed = binaries(&drain_io(&mut s));
        assert!(matches!(&renewed[..], [m] if matches!(m[..], [Message::Awareness(_)])), "{renewed:?}");
        assert_eq!(s.poll_timeout(), Some(NOW + 9_000 + SILENCE_LIMIT_MS));
        drain_events(&mut s);
        s.handle_timeout(NOW + 9_000 + SILENCE_LIMIT_MS - 1, 0.0);
        assert!(drain_io(&mut s).is_empty(), "not silent yet");
        assert!(drain_events(&mut s).is_empty());

        // Then nothing more: the socket is dropped and the session says why.
        let stalled_at = NOW + 9_000 + SILENCE_LIMIT_MS;
        s.handle_timeout(stalled_at, 0.0);
        assert_eq!(drain_io(&mut s), vec![Io::Close]);
        assert_eq!(
            connection_events(&drain_events(&mut s)),
            vec![(ConnectionStatus::Reconnecting, Some(Reason::NoAnswer), Some(250))]
        );
        assert_eq!(s.command(ClientMessage::RaiseHand {}), Err(CommandError::NotConnected));
        // A late close of the dropped socket changes nothing.
        s.handle_close(1006, 0.0, stalled_at + 1);
        assert_eq!(s.poll_timeout(), Some(stalled_at + 250));

        s.handle_timeout(stalled_at + 250, 0.0);
        assert_eq!(drain_io(&mut s), vec![Io::Connect]);
        assert_eq!(
            connection_events(&drain_events(&mut s)),
            vec![(ConnectionStatus::Reconnecting, Some(Reason::NoAnswer), None)],
            "still reconnecting while the attempt runs"
        );
        s.handle_open(stalled_at + 300);
        assert_eq!(texts(&drain_io(&mut s)), vec![json!({"type": "hello", "resume": "tok1"})]);
        s.handle_text(&welcome("tok1", 2), stalled_at + 320);
        assert!(connection_events(&drain_events(&mut s)).contains(&(ConnectionStatus::Online, None, None)));
        assert_eq!(s.poll_timeout(), Some(stalled_at + 320 + SILENCE_LIMIT_MS));
    }

    #[test]
    fn an_attempt_that_never_opens_or_answers_is_given_up_after_the_silence_limit() {
        let mut s = Session::new(None);
        s.start(NOW);
        drain_io(&mut s);
        assert_eq!(s.poll_timeout(), Some(NOW + SILENCE_LIMIT_MS));
        s.handle_timeout(NOW + SILENCE_LIMIT_MS, 0.0);
        assert_eq!(drain_io(&mut s), vec![Io::Close], "no probe: the network does not answer");
        assert!(s.poll_timeout().is_some_and(|at| at > NOW + SILENCE_LIMIT_MS));

        // Opened, but the answer to hello never comes.
        let mut s = Session::new(None);
        s.start(NOW);
        s.handle_open(NOW + 100);
        drain_io(&mut s);
        s.handle_timeout(NOW + 100 + SILENCE_LIMIT_MS, 0.0);
        assert_eq!(drain_io(&mut s), vec![Io::Close]);

        // A probe that is never answered.
        let mut s = joined();
        s.handle_close(1006, 0.0, NOW);
        s.handle_timeout(NOW + 250, 0.0);
        s.handle_close(1006, 0.0, NOW + 300);
        assert_eq!(drain_io(&mut s), vec![Io::Connect, Io::Probe]);
        s.handle_timeout(NOW + 300 + SILENCE_LIMIT_MS, 0.0);
        drain_events(&mut s);
        assert!(matches!(s.poll_timeout(), Some(at) if at > NOW + 300 + SILENCE_LIMIT_MS));
        s.handle_probe(Some(401), 0.0, NOW + 400 + SILENCE_LIMIT_MS);
        assert!(!s.is_finished(), "a probe answered after it was given up is ignored");
    }

    #[test]
    fn reconnect_now_skips_the_backoff_only_when_it_can_help() {
        let mut s = joined();
        // Connected and not silent: nothing to do.
        assert!(!s.reconnect_now(NOW + 1_000));
        assert!(drain_io(&mut s).is_empty());

        // Waiting out a long backoff: reconnect at once.
        for _ in 0..5 {
            s.handle_close(1006, 0.999, NOW);
            let at = s.poll_timeout().unwrap();
            s.handle_timeout(at, 0.0);
            s.handle_open(at);
        }
        s.handle_close(1006, 0.999, NOW + 2_000);
        assert!(s.poll_timeout().unwrap() > NOW + 10_000, "a long wait was scheduled");
        drain_io(&mut s);
        assert!(s.reconnect_now(NOW + 2_001));
        assert_eq!(drain_io(&mut s), vec![Io::Connect]);
        // An attempt that has not been answered may be stuck on the network that failed: a
        // new one replaces it.
        assert!(s.reconnect_now(NOW + 2_002));
        assert_eq!(drain_io(&mut s), vec![Io::Close, Io::Connect]);
        s.handle_open(NOW + 2_010);
        s.handle_text(&welcome("tok1", 3), NOW + 2_020);
        drain_io(&mut s);
        drain_events(&mut s);

        // A page that slept: its timers did not run, and the socket has been silent too long.
        let woke = NOW + 2_020 + SILENCE_LIMIT_MS + 60_000;
        assert!(s.reconnect_now(woke));
        assert_eq!(drain_io(&mut s), vec![Io::Close, Io::Connect]);
        assert_eq!(
            connection_events(&drain_events(&mut s)),
            vec![(ConnectionStatus::Reconnecting, Some(Reason::NoAnswer), None)]
        );

        // The first connection is left alone.
        let mut s = Session::new(None);
        s.start(NOW);
        drain_io(&mut s);
        assert!(!s.reconnect_now(NOW + 1));
        assert!(drain_io(&mut s).is_empty());

        // Finished: never.
        let mut s = joined();
        s.handle_close(close::REMOVED, 0.0, NOW);
        drain_io(&mut s);
        assert!(!s.reconnect_now(NOW + 1));
        assert!(drain_io(&mut s).is_empty());
    }

    #[test]
    fn close_codes_follow_the_one_table() {
        for entry in close::CLOSE_CODES.iter().map(|c| c.code).chain([1006, 4499, 4599]) {
            let mut s = joined();
            s.handle_close(entry, 0.0, NOW);
            let events = connection_events(&drain_events(&mut s));
            let [(status, reason, retry)] = events[..] else { panic!("{entry}: {events:?}") };
            match close::reconnect_after(entry) {
                Reconnect::Never => {
                    assert!(s.is_finished(), "{entry}");
                    assert_eq!(s.poll_timeout(), None, "{entry}");
                    let expected = match entry {
                        close::MEETING_ENDED => ConnectionStatus::Ended,
                        close::REMOVED => ConnectionStatus::Removed,
                        close::LINK_RENEWED => ConnectionStatus::LinkRenewed,
                        _ => ConnectionStatus::Refused,
                    };
                    assert_eq!(status, expected, "{entry}");
                }
                Reconnect::Later => {
                    assert_eq!(status, ConnectionStatus::Reconnecting, "{entry}");
                    assert!(retry.unwrap() >= crate::backoff::LATER_FIRST_DELAY_MS / 2, "{entry}: {retry:?}");
                    assert!(reason.is_some(), "{entry}");
                }
                Reconnect::Now => {
                    assert_eq!(status, ConnectionStatus::Reconnecting, "{entry}");
                    assert!(retry.unwrap() < crate::backoff::FIRST_DELAY_MS, "{entry}: {retry:?}");
                }
            }
        }
        let reason_of = |code: u16| {
            let mut s = joined();
            s.handle_close(code, 0.0, NOW);
            connection_events(&drain_events(&mut s))[0].1
        };
        assert_eq!(reason_of(close::ROOM_FULL), Some(Reason::RoomFull));
        assert_eq!(reason_of(close::TOO_SLOW), Some(Reason::TooSlow));
        assert_eq!(reason_of(close::RATE_LIMITED), Some(Reason::RateLimited));
        assert_eq!(reason_of(close::UNRESPONSIVE), Some(Reason::NoAnswer));
        assert_eq!(reason_of(close::SERVICE_RESTART), Some(Reason::ServerRestart));
        assert_eq!(reason_of(close::BOARD_FULL), Some(Reason::BoardFull));
        assert_eq!(reason_of(close::MALFORMED_SYNC), Some(Reason::Malformed));
        assert_eq!(reason_of(1006), Some(Reason::ConnectionLost));
    }

    #[test]
    fn edits_made_while_reconnecting_stay_local_and_travel_on_reconnect() {
        let mut s = joined();
        s.handle_close(1006, 0.0, NOW);
        drain_events(&mut s);
        assert!(s.can_write(), "the board stays writable while reconnecting");
        s.edit_text(&TextKey::Notes, "typed offline", Some(13)).unwrap();
        s.add_card("offline-card", "a card too", NOW).unwrap();
        assert!(drain_io(&mut s).is_empty(), "nothing is sent while not connected");
        assert_eq!(s.command(ClientMessage::RaiseHand {}), Err(CommandError::NotConnected));

        s.handle_timeout(NOW + 250, 0.0);
        s.handle_open(NOW + 260);
        s.handle_text(&welcome("tok1", 4), NOW + 270);
        drain_io(&mut s);
        s.handle_binary(&sync::encode_step1(&Board::new().state_vector()), NOW + 280);
        let frames = binaries(&drain_io(&mut s));
        let [Message::Sync(SyncMessage::SyncStep2(update))] = &frames[0][..] else { panic!("{frames:?}") };
        let mut server = Board::new();
        server.apply_update(update).unwrap();
        assert_eq!(server.notes(), "typed offline");
        assert_eq!(server.cards()[0].body, "a card too");
    }

    #[test]
    fn a_refusal_of_a_frame_without_our_edit_is_not_shown() {
        let refusal = r#"{"type":"error","code":"read_only","message":"you may not write"}"#;
        let observer_welcome = json!({"type": "welcome", "member_id": "me", "role": "observer", "resume_token": "t",
            "state": state(1, json!({"members": [{"id": "me", "name": "Ann", "role": "observer", "status": "here"}]}))})
        .to_string();
        let locked_welcome = json!({"type": "welcome", "member_id": "me", "role": "member", "resume_token": "t",
            "state": state(1, json!({"board_locked": true}))})
        .to_string();
        let mut room = Board::new();
        room.set_text(&TextKey::Notes, "the room's notes", None).unwrap();
        for welcome in [observer_welcome, locked_welcome] {
            let mut s = Session::new(None);
            s.start(NOW);
            s.handle_open(NOW);
            s.handle_text(&welcome, NOW);
            s.handle_binary(&sync::encode_step2(&room.update_since(&Default::default())), NOW);
            // The server's step 1 is answered with a step 2 (empty), which it refuses.
            s.handle_binary(&sync::encode_step1(&room.state_vector()), NOW);
            drain_io(&mut s);
            drain_events(&mut s);
            s.handle_text(refusal, NOW);
            assert!(drain_events(&mut s).is_empty(), "no notice for an edit the user never made");
            assert!(drain_io(&mut s).is_empty(), "no resync");
            assert_eq!(s.board().notes(), "the room's notes", "the board is kept");
        }

        // A member whose edits were taken (the answer to a later step 1 came back) gets no
        // notice either when a frame without an edit is refused.
        let mut s = joined();
        s.handle_binary(&sync::encode_step2(&Board::new().update_since(&Default::default())), NOW);
        s.edit_text(&TextKey::Notes, "taken", None).unwrap();
        s.handle_binary(&sync::encode_update(&room.update_since(&Default::default())[..]), NOW);
        // An update that builds on nothing we have: the session asks with a step 1…
        let mut other = Board::new();
        other.set_text(&TextKey::Notes, "x", None).unwrap();
        let gap = other.set_text(&TextKey::Notes, "xy", None).unwrap().unwrap();
        s.handle_binary(&sync::encode_update(&gap), NOW);
        // …and the answer confirms everything sent before it.
        s.handle_binary(&sync::encode_step2(&other.update_since(&s.board().state_vector())), NOW);
        drain_io(&mut s);
        drain_events(&mut s);
        s.handle_text(refusal, NOW);
        assert!(drain_events(&mut s).is_empty());
    }

    #[test]
    fn a_refusal_of_our_own_edit_is_shown() {
        // A member types just as a leader locks the board: the state with the lock had not
        // arrived yet, so the edit went out and was refused.
        let mut s = joined();
        s.handle_binary(&sync::encode_step2(&Board::new().update_since(&Default::default())), NOW);
        s.edit_text(&TextKey::Notes, "typed during the lock", None).unwrap();
        drain_io(&mut s);
        drain_events(&mut s);
        s.handle_text(&json!({"type": "state", "state": state(2, json!({"board_locked": true}))}).to_string(), NOW);
        s.handle_text(
            r#"{"type":"error","code":"read_only","message":"the board is locked","reason":"board_locked"}"#,
            NOW,
        );
        let events = drain_events(&mut s);
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::Error {
                    code: ErrorCode::ReadOnly,
                    reason: Some(RefusalReason::BoardLocked),
                    lost_edit: true,
                    ..
                }
            )),
            "{events:?}"
        );
        assert!(s.board().is_empty(), "the refused copy was thrown away");
        assert_eq!(binaries(&drain_io(&mut s)).len(), 1, "and a fresh one asked for");
        // Only once: a second refusal (of nothing new) is not shown again.
        s.handle_text(r#"{"type":"error","code":"read_only","message":"the board is locked"}"#, NOW);
        assert!(drain_events(&mut s).is_empty());
    }

    #[test]
    fn a_refused_command_says_why_and_loses_no_edit() {
        let mut s = joined();
        s.command(ClientMessage::RaiseHand {}).unwrap();
        drain_io(&mut s);
        drain_events(&mut s);
        s.handle_text(
            &ServerMessage::refused(
                balint_proto::rules::may_raise_hand(
                    &Seat { role: Role::Member, admitted: true, presenter: true, connected: true },
                    &Stage { phase: Phase::Reflection, board_locked: false },
                )
                .unwrap_err(),
            )
            .to_json(),
            NOW,
        );
        let events = drain_events(&mut s);
        assert_eq!(
            serde_json::to_value(&events).unwrap(),
            json!([{"type": "error", "code": "not_eligible", "reason": "presenter_in_reflection",
                "message": RefusalReason::PresenterInReflection.message(), "lost_edit": false}])
        );
        // An older server's error, without a reason, still arrives.
        s.handle_text(r#"{"type":"error","code":"forbidden","message":"only a leader can do that"}"#, NOW);
        assert!(matches!(&drain_events(&mut s)[..], [Event::Error { reason: None, lost_edit: false, .. }]));
    }

    #[test]
    fn a_member_back_after_the_grace_period_is_told_what_was_released() {
        let mut s = Session::new(Some("old".into()));
        s.start(NOW);
        s.handle_open(NOW);
        let welcome = json!({"type": "welcome", "member_id": "me", "role": "member", "resume_token": "new",
            "state": state(1, json!({})),
            "released": {"hand": true, "floor": false, "presenter": true, "role": "leader", "grace_secs": 120}})
        .to_string();
        s.handle_text(&welcome, NOW);
        let events = drain_events(&mut s);
        let released = events.iter().find_map(|e| match e {
            Event::Released(r) => Some(r.clone()),
            _ => None,
        });
        let expected =
            Released { hand: true, floor: false, presenter: true, role: Some(Role::Leader), grace_secs: Some(120) };
        assert_eq!(released, Some(expected));
        assert_eq!(
            serde_json::to_value(Event::Released(released.unwrap())).unwrap(),
            json!({"type": "released", "hand": true, "floor": false, "presenter": true, "role": "leader", "grace_secs": 120})
        );
        // An ordinary welcome says nothing of the kind.
        let mut s = joined();
        s.handle_close(1006, 0.0, NOW);
        s.handle_timeout(NOW + 250, 0.0);
        s.handle_open(NOW + 260);
        s.handle_text(&welcome_plain(), NOW + 270);
        assert!(!drain_events(&mut s).iter().any(|e| matches!(e, Event::Released(_))));
    }

    fn welcome_plain() -> String {
        welcome("tok1", 5)
    }

    // -----------------------------------------------------------------------------------------
    // Attendance, cursors and the next speaker.

    const MIN: u64 = 60_000;

    /// A session welcomed as `me` with `members` (`[id, name, role, status, joined_at_ms]`).
    fn joined_as(me: &str, role: &str, members: Value, extra: Value) -> Session {
        let mut s = Session::new(None);
        s.start(NOW);
        s.handle_open(NOW);
        let welcome = json!({"type": "welcome", "member_id": me, "role": role, "resume_token": "tok",
                             "state": state(1, with_members(members, extra))});
        s.handle_text(&welcome.to_string(), NOW);
        drain_io(&mut s);
        drain_events(&mut s);
        s
    }

    fn with_members(members: Value, extra: Value) -> Value {
        let members: Vec<Value> = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| json!({"id": m[0], "name": m[1], "role": m[2], "status": m[3], "joined_at_ms": m[4]}))
            .collect();
        let mut extra = extra;
        extra["members"] = Value::Array(members);
        extra
    }

    fn push_state(s: &mut Session, version: u64, members: Value, now_ms: u64) {
        let message = json!({"type": "state", "state": state(version, with_members(members, json!({})))});
        s.handle_text(&message.to_string(), now_ms);
    }

    #[test]
    fn a_leader_keeps_attendance_through_drops_absences_and_lapses() {
        let lea = json!(["lea", "Lea", "leader", "here", NOW - MIN]);
        let ann = |status: &str| json!(["ann", "Smith, Ann", "member", status, NOW - 2 * MIN]);
        let ben = json!(["ben", "=HYPERLINK(\"x\")", "member", "here", NOW]);
        let mut s = joined_as("lea", "leader", json!([lea, ann("here"), ben]), json!({}));
        push_state(&mut s, 2, json!([lea, ann("reconnecting"), ben]), NOW + 10 * MIN);
        push_state(&mut s, 3, json!([lea, ann("here"), ben]), NOW + 12 * MIN);
        // Ben's grace period ran out; Ann marked herself away.
        push_state(&mut s, 4, json!([lea, ann("away")]), NOW + 20 * MIN);

        let sheet = serde_json::to_value(s.attendance(NOW + 30 * MIN)).unwrap();
        assert_eq!(sheet["title"], "Tuesday");
        assert_eq!(sheet["date"], NOW - 2 * MIN, "the earliest arrival");
        let rows = sheet["members"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "a member who lapsed stays on the sheet");
        assert_eq!(rows[0]["name"], "Lea");
        assert_eq!(rows[0]["left_at_ms"], Value::Null, "still here");
        assert_eq!(rows[0]["minutes_present"], 31);
        assert_eq!(rows[1]["joined_at_ms"], NOW - 2 * MIN);
        assert_eq!(rows[1]["left_at_ms"], NOW + 20 * MIN);
        assert_eq!(rows[1]["minutes_present"], 12 + 8, "present before the drop and after it, until away");
        assert_eq!(
            rows[1]["intervals"],
            json!([{"start_ms": NOW - 2 * MIN, "end_ms": NOW + 10 * MIN},
                   {"start_ms": NOW + 12 * MIN, "end_ms": NOW + 20 * MIN}])
        );
        assert_eq!(rows[2]["left_at_ms"], NOW + 20 * MIN);
        assert_eq!(rows[2]["minutes_present"], 20);

        let csv = s.attendance_csv(NOW + 30 * MIN);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], "meeting,date,name,role,joined_at_utc,left_at_utc,minutes_present");
        assert_eq!(lines[1], "Tuesday,2026-01-01,Lea,leader,2026-01-01T09:59:00Z,,31");
        assert_eq!(lines[2], "Tuesday,2026-01-01,\"Smith, Ann\",member,2026-01-01T09:58:00Z,2026-01-01T10:20:00Z,20");
        assert_eq!(
            lines[3],
            "Tuesday,2026-01-01,\"'=HYPERLINK(\"\"x\"\")\",member,2026-01-01T10:00:00Z,2026-01-01T10:20:00Z,20",
            "a name that would be a formula is quoted and guarded"
        );
        assert_eq!(lines[4], "", "every record ends with CRLF");

        // The meeting ends: the sheet stays for the leader to download, everyone gone.
        s.handle_text(r#"{"type":"ended","reason":"ended_by_leader"}"#, NOW + 40 * MIN);
        let sheet = s.attendance(NOW + 50 * MIN);
        assert_eq!(sheet.members[0].left_at_ms, Some(NOW + 40 * MIN));
        assert_eq!(sheet.members[0].minutes_present, 41);
    }

    #[test]
    fn members_keep_no_attendance() {
        let mut s = joined();
        push_state(&mut s, 2, json!([["me", "Ann", "member", "here", NOW]]), NOW + MIN);
        assert!(s.attendance(NOW + MIN).members.is_empty());
        assert_eq!(s.attendance_csv(NOW + MIN).lines().count(), 1, "the header only");
    }

    #[test]
    fn the_next_speaker_is_known_before_the_leader_clicks() {
        let lea = json!(["lea", "Lea", "leader", "here", NOW]);
        let ann = json!(["ann", "Ann", "member", "reconnecting", NOW]);
        let ben = json!(["ben", "Ben", "member", "here", NOW]);
        let queue = json!({"queue": [{"member": "ann", "raised_at_ms": NOW}, {"member": "ben", "raised_at_ms": NOW}]});
        let s = joined_as("lea", "leader", json!([lea, ann, ben]), queue);
        let next = serde_json::to_value(s.next_speaker()).unwrap();
        assert_eq!(
            next,
            json!({"member": "ben", "skipped": [{"member": "ann", "status": "reconnecting", "reason": "reconnecting"}]})
        );
    }

    /// Hands every binary frame `from` wants to send to `to`, as the server relays them.
    fn relay(from: &mut Session, to: &mut Session, now_ms: u64) {
        for io in drain_io(from) {
            if let Io::SendBinary(frame) = io {
                to.handle_binary(&frame, now_ms);
            }
        }
    }

    #[test]
    fn cursors_travel_as_awareness_and_stay_with_their_text() {
        let people = json!([["ann", "Ann", "member", "here", NOW], ["ben", "Ben", "member", "here", NOW]]);
        let mut ann = joined_as("ann", "member", people.clone(), json!({}));
        let mut ben = joined_as("ben", "member", people.clone(), json!({}));
        ann.edit_text(&TextKey::Notes, "hello world", Some(11)).unwrap();
        ann.add_card("c1", "He seems tired", NOW).unwrap();
        relay(&mut ann, &mut ben, NOW);
        assert_eq!(ben.board().notes(), "hello world");

        assert!(ann.set_cursor(TextKey::Notes, 6, 11, NOW + 1_000));
        let frames = binaries(&ann.io.iter().cloned().collect::<Vec<_>>());
        let Message::Awareness(update) = &frames[0][0] else { panic!("expected awareness, got {frames:?}") };
        let state: Value = serde_json::from_str(&update.clients.values().next().unwrap().json).unwrap();
        assert_eq!(state["balint"], json!({"target": "notes"}));
        assert!(state["cursor"]["anchor"]["item"]["client"].is_u64(), "a Yjs relative position: {state}");
        // At the end of the text there is no item to tie to: the text itself is named, as Yjs does.
        assert_eq!(state["cursor"]["head"], json!({"tname": "notes", "assoc": 0}));
        assert_eq!(state["user"]["color"], crate::awareness::color_of("ann"));
        relay(&mut ann, &mut ben, NOW + 1_000);

        let cursors = serde_json::to_value(ben.cursors(NOW + 2_000)).unwrap();
        assert_eq!(
            cursors,
            json!([{"client": ann.board().client_id(), "name": "Ann", "color": crate::awareness::color_of("ann"),
                    "target": "notes", "card": null, "index": 6, "head": 11}])
        );
        assert!(ann.cursors(NOW + 2_000).is_empty(), "our own cursor is not among the others'");

        // Ben types before it: Ann's cursor stays on "world".
        ben.edit_text(&TextKey::Notes, "Oh, hello world", Some(4)).unwrap();
        assert_eq!((ben.cursors(NOW + 3_000)[0].index, ben.cursors(NOW + 3_000)[0].head), (10, 15));

        // In a card.
        assert!(ann.set_cursor(TextKey::Card("c1".into()), 3, 3, NOW + 4_000));
        relay(&mut ann, &mut ben, NOW + 4_000);
        let cursor = &ben.cursors(NOW + 5_000)[0];
        assert_eq!((cursor.target, cursor.card.as_deref(), cursor.index), ("card", Some("c1"), 3));
        // A card that does not exist here is no place to show.
        assert!(!ann.set_cursor(TextKey::Card("nope".into()), 0, 0, NOW + 5_000));

        // The editor loses focus: the cursor goes.
        ann.set_cursor(TextKey::Notes, 1, 1, NOW + 6_000);
        ann.clear_cursor(NOW + 6_500);
        relay(&mut ann, &mut ben, NOW + 6_500);
        assert!(ben.cursors(NOW + 7_000).is_empty());

        // A state not renewed for the timeout is dropped.
        ann.set_cursor(TextKey::Notes, 1, 1, NOW + 8_000);
        relay(&mut ann, &mut ben, NOW + 8_000);
        assert_eq!(ben.cursors(NOW + 8_000 + crate::awareness::OUTDATED_MS - 1).len(), 1);
        assert!(ben.cursors(NOW + 8_000 + crate::awareness::OUTDATED_MS).is_empty());
    }

    #[test]
    fn a_presenter_pushed_back_sees_cursors_but_shows_none() {
        let people = json!([["ann", "Ann", "member", "here", NOW], ["pia", "Pia", "member", "outside_circle", NOW]]);
        let reflection = json!({"presenter": "pia",
                                "phase": {"name": "reflection", "started_at_ms": NOW, "duration_secs": 2100}});
        let mut ann = joined_as("ann", "member", people.clone(), reflection.clone());
        let mut pia = joined_as("pia", "member", people, reflection);
        assert!(!pia.can_write());
        ann.edit_text(&TextKey::Notes, "she feels", Some(9)).unwrap();
        ann.set_cursor(TextKey::Notes, 9, 9, NOW);
        relay(&mut ann, &mut pia, NOW);
        assert_eq!(pia.cursors(NOW + 1_000).len(), 1, "Pia sees Ann writing");
        assert_eq!(pia.cursors(NOW + 1_000)[0].index, 9);

        assert!(!pia.set_cursor(TextKey::Notes, 0, 0, NOW + 1_000), "no cursor of hers while she listens");
        relay(&mut pia, &mut ann, NOW + 1_000);
        assert!(ann.cursors(NOW + 1_500).is_empty());
    }

    #[test]
    fn a_removal_of_our_state_by_the_server_is_answered_with_a_newer_one() {
        let mut s = joined();
        let own = yrs::block::ClientID::new(s.board().client_id());
        // An old socket of ours closed after the new one said who we are: the server removed
        // our state with a higher clock.
        let removal = balint_proto::sync::AwarenessUpdate {
            clients: [(own, balint_proto::sync::AwarenessUpdateEntry { clock: 7, json: "null".into() })].into(),
        };
        s.handle_binary(&sync::encode_awareness(&removal), NOW + 1);
        let frames = binaries(&drain_io(&mut s));
        match &frames[..] {
            [m] => match &m[..] {
                [Message::Awareness(update)] => assert_eq!(update.clients[&own].clock, 8),
                other => panic!("expected our state again, got {other:?}"),
            },
            other => panic!("expected one frame, got {other:?}"),
        }
    }

    #[test]
    fn in_a_sealed_room_names_and_the_title_travel_sealed_and_open_only_where_they_belong() {
        use crate::seal::{open_name, seal_text, RoomKey};
        use balint_proto::sealed::Kind;
        let key = RoomKey::from_bytes([7; 32]);
        let room = "room1";
        let mut ann = Session::sealed(None, room, key.clone(), " Ann ").unwrap();
        ann.start(NOW);
        ann.handle_open(NOW);
        drain_io(&mut ann);

        // In the lobby, the leaders see who waits only by the name we send.
        ann.handle_text(&json!({"type": "waiting", "member_id": "me", "resume_token": "t"}).to_string(), NOW);
        let sent = texts(&drain_io(&mut ann));
        let value = sent[0]["sealed_name"].as_str().expect("our name goes out sealed").to_owned();
        assert_eq!(sent[0]["type"], "set_sealed_name");
        assert_eq!(open_name(&key, room, "me", &value).unwrap(), "Ann");

        // Admitted: Lea's name and the title open. The value shown at "me" was sealed by Lea:
        // moved to another member, it does not open, and the page shows no name rather than
        // one the server chose.
        let lea = seal_text(&key, room, "lea", 5, Kind::Name, "Lea").unwrap();
        let moved = seal_text(&key, room, "lea", 6, Kind::Name, "Mallory").unwrap();
        let title = seal_text(&key, room, "", 0, Kind::Title, "Case of Mrs. K").unwrap();
        let members = |mine: &str| {
            json!([
                {"id": "me", "name": "", "role": "member", "status": "here", "sealed_name": mine},
                {"id": "lea", "name": "", "role": "leader", "status": "here", "sealed_name": lea}
            ])
        };
        let extra = json!({"title": null, "sealed": true, "sealed_title": title, "members": members(&moved)});
        let welcome = json!({"type": "welcome", "member_id": "me", "role": "member", "resume_token": "t",
                             "state": state(1, extra)});
        ann.handle_text(&welcome.to_string(), NOW);
        let shown = drain_events(&mut ann)
            .into_iter()
            .find_map(|e| match e {
                Event::State { state, .. } => Some(state),
                _ => None,
            })
            .unwrap();
        assert_eq!(shown.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["", "Lea"]);
        assert_eq!(shown.title.as_deref(), Some("Case of Mrs. K"));
        // Our name is not shown as ours: it goes out again.
        let sent = texts(&drain_io(&mut ann));
        let again = sent.iter().find(|m| m["type"] == "set_sealed_name").expect("sent again");
        let again = again["sealed_name"].as_str().unwrap().to_owned();
        assert_ne!(again, value, "a fresh sequence number and nonce");
        assert_eq!(open_name(&key, room, "me", &again).unwrap(), "Ann");

        // Once the room shows it, it is not sent again.
        let extra = json!({"title": null, "sealed": true, "sealed_title": title, "members": members(&again)});
        ann.handle_text(&json!({"type": "state", "state": state(2, extra)}).to_string(), NOW);
        let shown = ann.state().unwrap();
        assert_eq!(shown.members[0].name, "Ann");
        assert!(texts(&drain_io(&mut ann)).iter().all(|m| m["type"] != "set_sealed_name"));
    }

    /// A fake server for sealed rooms: it stamps senders, keeps the log, forwards entries and
    /// applies snapshots, as `docs/PROTOCOL.md` §13 says, and reads nothing sealed.
    mod sealed_room {
        use super::*;
        use balint_proto::sealed::{decode, encode_entry, encode_log, Frame};

        pub const ROOM: &str = "room1";

        pub struct Server {
            pub log: Vec<Entry>,
            /// Every frame any client sent, for the leak check.
            pub sent: Vec<Vec<u8>>,
        }

        pub struct Peer {
            pub id: &'static str,
            pub session: Session,
        }

        pub fn key() -> RoomKey {
            RoomKey::from_bytes([7; 32])
        }

        pub fn welcome(id: &str, role: &str) -> String {
            json!({"type": "welcome", "member_id": id, "role": role, "resume_token": format!("tok-{id}"),
                   "state": state(1, json!({}))})
            .to_string()
        }

        impl Server {
            pub fn new() -> Self {
                Server { log: Vec::new(), sent: Vec::new() }
            }

            /// `peer` joins: welcome, then the log.
            pub fn join(&mut self, id: &'static str, role: &str, key: RoomKey) -> Peer {
                let mut session = Session::sealed(None, ROOM, key, "Ann").unwrap();
                session.start(NOW);
                session.handle_open(NOW);
                session.handle_text(&welcome(id, role), NOW);
                session.handle_binary(&encode_log(&self.log), NOW);
                Peer { id, session }
            }

            /// Delivers what every peer sent until nobody sends anything more.
            pub fn pump(&mut self, peers: &mut [&mut Peer]) {
                loop {
                    let mut moved = false;
                    for i in 0..peers.len() {
                        let io = drain_io(&mut peers[i].session);
                        for frame in io.into_iter().filter_map(|io| match io {
                            Io::SendBinary(b) => Some(b),
                            _ => None,
                        }) {
                            moved = true;
                            self.sent.push(frame.clone());
                            let sender = peers[i].id.to_owned();
                            match decode(&frame).expect("a sealed frame") {
                                Frame::ClientEntry(sealed) => {
                                    let logged = sealed.kind == Kind::Update;
                                    let entry = Entry { sender, sealed };
                                    if logged {
                                        self.log.push(entry.clone());
                                    }
                                    let out = encode_entry(&entry);
                                    for (j, peer) in peers.iter_mut().enumerate() {
                                        if j != i {
                                            peer.session.handle_binary(&out, NOW);
                                        }
                                    }
                                }
                                Frame::Snapshot(upload) => {
                                    let ids: Vec<_> =
                                        self.log.iter().map(|e| (e.sender.clone(), e.sealed.seq)).collect();
                                    if upload.covers.iter().all(|c| ids.contains(c)) && !upload.covers.is_empty() {
                                        let at = ids.iter().position(|id| upload.covers.contains(id)).unwrap();
                                        let snapshot = Entry { sender, sealed: upload.sealed };
                                        let mut log: Vec<Entry> = Vec::new();
                                        for (k, e) in self.log.drain(..).enumerate() {
                                            if k == at {
                                                log.push(snapshot.clone());
                                            }
                                            if !upload.covers.contains(&(e.sender.clone(), e.sealed.seq)) {
                                                log.push(e);
                                            }
                                        }
                                        self.log = log;
                                    }
                                }
                                other => panic!("a client sent {other:?}"),
                            }
                        }
                    }
                    if !moved {
                        return;
                    }
                }
            }
        }
    }

    #[test]
    fn a_plain_session_exports_the_board_once_its_first_sync_was_answered() {
        let mut s = Session::new(None);
        assert_eq!(s.export_markdown(None), None, "out of the room");
        s.start(NOW);
        s.handle_open(NOW);
        s.handle_text(&welcome("tok1", 1), NOW);
        assert_eq!(s.export_markdown(None), None, "before the answer to our step 1");
        let mut server = Board::new();
        let notes = server.set_text(&TextKey::Notes, "Frau K. rief an", None).unwrap().unwrap();
        s.handle_binary(&sync::encode_step2(&notes), NOW);
        assert_eq!(
            s.export_markdown(Some("Tuesday")).as_deref(),
            Some("# Tuesday\n\n## Notes\n\nFrau K. rief an\n\n## Observations\n\n(no observations)\n")
        );
        s.handle_close(1006, 0.5, NOW);
        assert_eq!(s.export_markdown(None), None, "while reconnecting");
    }

    #[test]
    fn a_sealed_leader_exports_the_board_it_opened_once_the_log_came() {
        use balint_proto::sealed::encode_log;
        use sealed_room::*;
        let mut server = Server::new();
        let mut ann = server.join("me", "member", key());
        ann.session.edit_text(&TextKey::Notes, "Frau K. rief nachts an", None).unwrap();
        ann.session.add_card("c1", "Wut im Raum", NOW).unwrap();
        server.pump(&mut [&mut ann]);

        let mut lea = Session::sealed(None, ROOM, key(), "Lea").unwrap();
        lea.start(NOW);
        lea.handle_open(NOW);
        lea.handle_text(&sealed_room::welcome("lea", "leader"), NOW);
        assert_eq!(lea.export_markdown(Some("Tuesday")), None, "before the log: the page may lack part of the board");
        lea.handle_binary(&encode_log(&server.log), NOW);
        let expected = "# Tuesday\n\n## Notes\n\nFrau K. rief nachts an\n\n## Observations\n\n### Questions\n\n\
                        - **Ann**: Wut im Raum\n";
        assert_eq!(lea.export_markdown(Some("Tuesday")).as_deref(), Some(expected));
    }

    #[test]
    fn two_sealed_sessions_co_write_through_entries_the_server_cannot_read() {
        use sealed_room::*;
        let mut server = Server::new();
        let mut ann = server.join("me", "member", key());
        let mut lea = server.join("lea", "leader", key());
        server.pump(&mut [&mut ann, &mut lea]);
        let marker = "Frau K. rief nachts an";
        ann.session.edit_text(&TextKey::Notes, marker, None).unwrap();
        server.pump(&mut [&mut ann, &mut lea]);
        assert_eq!(lea.session.board().notes(), marker);
        lea.session.edit_text(&TextKey::Notes, &format!("{marker}, zweimal"), None).unwrap();
        server.pump(&mut [&mut ann, &mut lea]);
        assert_eq!(ann.session.board().notes(), format!("{marker}, zweimal"));
        assert!(drain_events(&mut ann.session).contains(&Event::Board));
        // Every frame was sealed: no y-sync, and nothing of the text in clear.
        assert!(server.sent.iter().all(|f| sealed_frame::is_sealed_frame(f)));
        assert!(!server.sent.iter().any(|f| f.windows(6).any(|w| w == b"Frau K")));
        assert_eq!(server.log.len(), 2, "two updates logged; awareness is not");
        assert_eq!(server.log[0].sender, "me");
        assert!(server.log[0].sealed.seq >> 32 != 0 || server.log[0].sealed.seq & 0xffff_ffff == 1);
    }

    #[test]
    fn a_newcomer_builds_the_board_from_the_log_and_a_reconnect_resends_what_the_log_lacks() {
        use sealed_room::*;
        let mut server = Server::new();
        let mut ann = server.join("me", "member", key());
        ann.session.edit_text(&TextKey::Notes, "erste Notiz", None).unwrap();
        server.pump(&mut [&mut ann]);
        let mut lea = server.join("lea", "leader", key());
        assert_eq!(lea.session.board().notes(), "erste Notiz");

        // Ann's socket drops; she writes on, offline; the new socket's log lacks it.
        ann.session.handle_close(1006, 0.0, NOW);
        ann.session.edit_text(&TextKey::Notes, "erste Notiz, offline weiter", None).unwrap();
        assert!(drain_io(&mut ann.session).iter().all(|io| !matches!(io, Io::SendBinary(_))));
        ann.session.handle_timeout(NOW + 60_000, 0.0);
        ann.session.handle_open(NOW + 60_000);
        ann.session.handle_text(&welcome("me", "member"), NOW + 60_000);
        ann.session.handle_binary(&balint_proto::sealed::encode_log(&server.log), NOW + 60_000);
        let logged = server.log.len();
        server.pump(&mut [&mut ann, &mut lea]);
        assert_eq!(server.log.len(), logged + 1, "one entry with what the log lacked");
        assert_eq!(lea.session.board().notes(), "erste Notiz, offline weiter");
        // A reconnect with nothing new sends no update.
        ann.session.handle_close(1006, 0.0, NOW + 61_000);
        ann.session.handle_timeout(NOW + 120_000, 0.0);
        ann.session.handle_open(NOW + 120_000);
        ann.session.handle_text(&welcome("me", "member"), NOW + 120_000);
        ann.session.handle_binary(&balint_proto::sealed::encode_log(&server.log), NOW + 120_000);
        let logged = server.log.len();
        server.pump(&mut [&mut ann, &mut lea]);
        assert_eq!(server.log.len(), logged);
        assert_eq!(ann.session.board().notes(), "erste Notiz, offline weiter");
    }

    #[test]
    fn a_tampered_entry_is_reported_once_and_skipped() {
        use sealed_room::*;
        let mut server = Server::new();
        let mut ann = server.join("me", "member", key());
        ann.session.edit_text(&TextKey::Notes, "echt", None).unwrap();
        server.pump(&mut [&mut ann]);
        // The server (or anyone on the way) flips a byte of one entry, and moves another to a
        // different author; a third was sealed under another key.
        let mut flipped = server.log[0].clone();
        flipped.sealed.seq += 100;
        let mut ciphertext = flipped.sealed.ciphertext.to_vec();
        ciphertext[0] ^= 1;
        flipped.sealed.ciphertext = ciphertext.into();
        let mut moved = server.log[0].clone();
        moved.sender = "lea".into();
        let other_key = seal::seal(&RoomKey::from_bytes([9; 32]), ROOM, "lea", 1, Kind::Update, &{
            let mut b = Board::new();
            b.set_text(&TextKey::Notes, "fremd", None).unwrap().unwrap()
        })
        .unwrap();
        let foreign = Entry { sender: "lea".into(), sealed: other_key };
        let log = vec![server.log[0].clone(), flipped, moved, foreign];
        let mut bob = Session::sealed(None, ROOM, key(), "Bob").unwrap();
        bob.start(NOW);
        bob.handle_open(NOW);
        bob.handle_text(&welcome("bob", "member"), NOW);
        drain_events(&mut bob);
        bob.handle_binary(&balint_proto::sealed::encode_log(&log), NOW);
        assert_eq!(bob.board().notes(), "echt", "the good entry applies, the bad ones are skipped");
        let events = drain_events(&mut bob);
        assert_eq!(events.iter().filter(|e| **e == Event::Unreadable).count(), 1, "{events:?}");
        let json = serde_json::to_value(Event::Unreadable).unwrap();
        assert_eq!(json, json!({"type": "unreadable"}));
    }

    #[test]
    fn the_chosen_member_compacts_the_entries_it_applied_into_one_snapshot() {
        use sealed_room::*;
        let mut server = Server::new();
        let mut ann = server.join("me", "member", key());
        let mut lea = server.join("lea", "leader", key());
        let mut text = String::new();
        for i in 0..COMPACT_AFTER_ENTRIES - 1 {
            text.push_str(if i % 2 == 0 { "a" } else { "b" });
            ann.session.edit_text(&TextKey::Notes, &text, None).unwrap();
            server.pump(&mut [&mut ann, &mut lea]);
        }
        // Ann deletes a secret before the snapshot.
        text.push_str(" geheim");
        ann.session.edit_text(&TextKey::Notes, &text, None).unwrap();
        text.truncate(COMPACT_AFTER_ENTRIES - 1);
        ann.session.edit_text(&TextKey::Notes, &text, None).unwrap();
        server.pump(&mut [&mut ann, &mut lea]);
        // Lea, the leader, uploaded a snapshot that covered every entry she had: the log is it.
        assert_eq!(server.log.len(), 1, "the log is one snapshot");
        assert_eq!(server.log[0].sender, "lea");
        assert_eq!(server.log[0].sealed.kind, Kind::Snapshot);
        // A newcomer reads the board from it, and not what was erased.
        let bob = server.join("bob", "member", key());
        assert_eq!(bob.session.board().notes(), text);
        let opened = seal::open_update(&key(), ROOM, &server.log[0]).unwrap();
        assert!(!opened.windows(6).any(|w| w == b"geheim"));
        // Ann, not the chosen one, never uploaded one; later entries are covered by the next.
        ann.session.edit_text(&TextKey::Notes, "neu", None).unwrap();
        server.pump(&mut [&mut ann, &mut lea]);
        assert_eq!(server.log.len(), 2);
    }

    #[test]
    fn a_client_that_could_not_read_an_entry_never_compacts() {
        use sealed_room::*;
        let mut server = Server::new();
        let mut ann = server.join("me", "member", key());
        let mut lea = server.join("lea", "leader", RoomKey::from_bytes([1; 32]));
        let mut text = String::new();
        for _ in 0..=COMPACT_AFTER_ENTRIES {
            text.push('x');
            ann.session.edit_text(&TextKey::Notes, &text, None).unwrap();
            server.pump(&mut [&mut ann, &mut lea]);
        }
        assert_eq!(lea.session.board().notes(), "");
        assert_eq!(server.log.len(), COMPACT_AFTER_ENTRIES + 1, "nothing was compacted");
    }
}
